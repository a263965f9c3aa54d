"""A catalog of two teams for the API's tests: images with real snapshots in the store (so
files, containers and commits work), members of every role, and clients that sign in with a
token or a session."""

from __future__ import annotations

import io
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from pytest_django import Settings
from rest_framework.test import APIClient

from layerhub.accounts.models import Membership, Role, Team, Token
from layerhub.accounts.services import token_create
from layerhub.containers.models import Container
from layerhub.core.store import get_store
from layerhub.engine.digest import chain_ids
from layerhub.engine.fsutil import tree_usage
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.models import (
    Blob,
    Image,
    Layer,
    RegistryCredential,
    Repository,
    Tag,
)
from layerhub.jobs.models import Job
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, make_layer
from workers import app

REGISTRY = "127.0.0.1:5000"
ROLES = ("viewer", "developer", "maintainer", "owner")


def record_image(
    oci: OciImage,
    *,
    team: Team,
    refs: tuple[str, ...] = (),
    labels: dict[str, str] | None = None,
    public: bool = False,
) -> Image:
    """The rows a pull records for ``oci`` (its blobs in the store, its layers unpacked as
    snapshots, sizes measured), named ``refs`` (``repository:tag`` on REGISTRY) in ``team``;
    ``labels`` go in the catalog's summary of its config."""
    store = get_store()
    for blob in oci.blobs():
        store.blobs.put_bytes(blob.data, blob.digest)
    diff_ids = [layer.diff_id for layer in oci.layers]
    parent: Layer | None = None
    layers = []
    for blob, chain_id in zip(oci.layers, chain_ids(diff_ids), strict=True):
        store.snapshots.unpack(chain_id, io.BytesIO(blob.data), diff_id=blob.diff_id, durable=False)
        unpacked, files = tree_usage(store.snapshots.path(chain_id))
        row, _ = Layer.objects.get_or_create(
            chain_id=chain_id,
            defaults={
                "parent": parent,
                "digest": blob.digest,
                "diff_id": blob.diff_id,
                "media_type": blob.media_type,
                "size": blob.size,
                "unpacked_size": unpacked,
                "file_count": files,
                "unpacked_at": timezone.now(),
            },
        )
        Blob.objects.get_or_create(
            digest=blob.digest, defaults={"size": blob.size, "kind": Blob.Kind.LAYER}
        )
        layers.append(row)
        parent = row
    config = json.loads(oci.config.data)
    if labels:
        config["config"]["Labels"] = labels
    for blob, kind in ((oci.config, Blob.Kind.CONFIG), (oci.manifest, Blob.Kind.MANIFEST)):
        Blob.objects.get_or_create(digest=blob.digest, defaults={"size": blob.size, "kind": kind})
    image = Image.objects.create(
        manifest_digest=oci.manifest.digest,
        media_type=oci.manifest.media_type,
        config_digest=oci.config.digest,
        config={"config": config["config"], "history": config["history"]},
        own_blob_bytes=oci.config.size + oci.manifest.size,
        team=team,
    )
    image_layers_add(image=image, layers=layers)
    for ref in refs:
        name, _, tag = ref.partition(":")
        repository, _ = Repository.objects.get_or_create(
            team=team, registry=REGISTRY, name=name, defaults={"public": public}
        )
        image.repositories.add(repository)
        Tag.objects.create(repository=repository, name=tag, image=image)
    return image


def make_container(image: Image, team: Team, name: str, user: User | None = None) -> Container:
    """A container over ``image`` (its writable layer made in the store)."""
    container_id = secrets.token_hex(32)
    root = get_store().containers / container_id
    (root / "upper").mkdir(parents=True)
    (root / "work").mkdir()
    return Container.objects.create(
        container_id=container_id, name=name, image=image, team=team, created_by=user
    )


@dataclass
class World:
    """Team alpha (a member of each role), team beta (its owner, the outsider here), staff;
    alpha's images app:1 (a container "work" over it) and tool:1 and beta's private
    secret:1 share a base layer; gamma's public image lib:1 is visible to everyone."""

    alpha: Team
    beta: Team
    users: dict[str, User]
    app: Image
    spare: Image
    secret: Image
    public: Image
    app_tag: Tag
    container: Container
    job: Job
    login: RegistryCredential
    beta_login: RegistryCredential
    robot: Token
    base: LayerBlob
    top: LayerBlob
    secret_top: LayerBlob
    tokens: dict[str, str] = field(default_factory=dict)


def _user(name: str, **extra: Any) -> User:
    return User.objects.create_user(name, password="a long passphrase", **extra)


@pytest.fixture(autouse=True)
def api_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Passwords hashed cheaply (the tests make many users and check no password's
    strength); saved archives and uploads in folders of the test's own."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.LAYERHUB_EXPORT_DIR = tmp_path_factory.mktemp("exports")
    settings.LAYERHUB_UPLOAD_DIR = tmp_path_factory.mktemp("uploads")


@pytest.fixture
def world(db: None) -> World:
    alpha = Team.objects.create(name="alpha")
    beta = Team.objects.create(name="beta")
    gamma = Team.objects.create(name="gamma")
    users = {role: _user(role) for role in ROLES}
    for role in ROLES:
        Membership.objects.create(team=alpha, user=users[role], role=role)
    users["outsider"] = _user("outsider")
    Membership.objects.create(team=beta, user=users["outsider"], role=Role.OWNER)
    users["staff"] = _user("staff", is_staff=True)
    base = make_layer({"etc": None, "etc/os-release": b"ID=layerhub-test\n", "bin": None})
    top = make_layer({"app": None, "app/run": b"#!/bin/sh\necho app\n"})
    secret_top = make_layer({"srv": None, "srv/secret": b"beta's\n" * 100})
    lib_top = make_layer({"lib": None, "lib/x": b"x" * 10})
    tool_top = make_layer({"tool": None, "tool/bin": b"tool\n"})
    app = record_image(
        OciImage([base, top]),
        team=alpha,
        refs=("alpha/app:1",),
        labels={"org.opencontainers.image.title": "the app"},
    )
    spare = record_image(OciImage([base, tool_top]), team=alpha, refs=("alpha/tool:1",))
    secret = record_image(OciImage([base, secret_top]), team=beta, refs=("beta/secret:1",))
    public = record_image(OciImage([lib_top]), team=gamma, refs=("gamma/lib:1",), public=True)
    container = make_container(app, alpha, "work", users["developer"])
    job = Job.objects.create(
        kind=Job.Kind.PULL,
        reference=f"{REGISTRY}/alpha/app:1",
        team=alpha,
        created_by=users["developer"],
    )
    login = RegistryCredential.objects.create(team=alpha, host=REGISTRY, username="alpha-bot")
    login.set_password("alpha's password")
    login.save()
    beta_login = RegistryCredential.objects.create(team=beta, host=REGISTRY, username="beta-bot")
    robot, _ = token_create(name="ci", actor=users["owner"], scope=Token.Scope.READ, team=alpha)
    return World(
        alpha=alpha,
        beta=beta,
        users=users,
        app=app,
        spare=spare,
        secret=secret,
        public=public,
        app_tag=Tag.objects.get(image=app),
        container=container,
        job=job,
        login=login,
        beta_login=beta_login,
        robot=robot,
        base=base,
        top=top,
        secret_top=secret_top,
    )


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place. Afterwards the Celery app has no value of its own for these
    settings again: a value left behind (even the one found before) would hide a later test's
    override of CELERY_TASK_ALWAYS_EAGER in Django's settings."""
    changes = app.conf.changes
    assert changes is not None  # the app's configuration is loaded by now
    saved = {key: changes[key] for key in EAGER_KEYS if key in changes}
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    for key in EAGER_KEYS:
        if key in saved:
            changes[key] = saved[key]
        else:
            changes.pop(key, None)


EAGER_KEYS = ("task_always_eager", "task_eager_propagates")


def token_client(user: User, scope: str = Token.Scope.READ_WRITE) -> APIClient:
    """A client sending a fresh personal token of ``user``."""
    _, secret = token_create(name=f"test {secrets.token_hex(4)}", actor=user, scope=scope)
    return bearer(secret)


def bearer(secret: str, keyword: str = "Bearer") -> APIClient:
    """A client sending ``secret`` as ``Authorization: <keyword> <secret>``."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{keyword} {secret}")
    return client


@pytest.fixture
def as_user(world: World) -> Callable[[str], APIClient]:
    """A token client for a user of the world by name (``anonymous``: no credentials)."""

    def make(name: str) -> APIClient:
        if name == "anonymous":
            return APIClient()
        return token_client(world.users[name])

    return make
