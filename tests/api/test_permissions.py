"""The API's permission matrix, from one table: every endpoint against anonymous, a user of
another team, each role of the team, and staff. Allowed answers its success status; refused
is 401 without credentials, 404 for what the user does not see, 403 for what they see but
may not do (or a team that is not theirs), always in the one error shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pytest_django import Settings
from rest_framework.test import APIClient

from tests.api.conftest import World, token_client

PRINCIPALS = ("anonymous", "outsider", "viewer", "developer", "maintainer", "owner", "staff")
SIGNED_IN = frozenset(PRINCIPALS) - {"anonymous"}
ALPHA = frozenset({"viewer", "developer", "maintainer", "owner", "staff"})
DEVELOPERS = frozenset({"developer", "maintainer", "owner", "staff"})
MAINTAINERS = frozenset({"maintainer", "owner", "staff"})
OWNERS = frozenset({"owner", "staff"})
BETA = frozenset({"outsider", "staff"})


@dataclass(frozen=True)
class Case:
    """One endpoint: who sees its object (others get 404), who may (others who see it get
    403), the status when allowed, and statuses that differ from that rule."""

    name: str
    method: str
    url: Callable[[World], str]
    body: Callable[[World], dict[str, Any]] | None = None
    may: frozenset[str] = SIGNED_IN
    sees: frozenset[str] | None = None  # default: who may
    ok: tuple[int, ...] = (200,)
    refused: dict[str, int] = field(default_factory=dict)
    multipart: bool = False

    def expected(self, principal: str) -> tuple[int, ...]:
        if principal == "anonymous":
            return (401,)
        if principal in self.may:
            return self.ok
        if principal in self.refused:
            return (self.refused[principal],)
        return (403,) if principal in (self.sees or self.may) else (404,)


def _chain(blob: Any) -> str:
    from layerhub.images.models import Layer

    return Layer.objects.get(digest=blob.digest).chain_id.removeprefix("sha256:")


def _package(image: Any) -> int:
    """A package recorded for ``image`` (the world's images are recorded, not unpacked)."""
    from layerhub.images.models import Package

    row, _ = Package.objects.get_or_create(
        image=image,
        ecosystem="deb",
        name="openssl",
        name_key="openssl",
        version="3.0.14-1",
        source_path="/var/lib/dpkg/status",
    )
    return row.pk


REPO = "127.0.0.1:5000"
NOT_OURS = {"outsider": 403}  # a team that is not theirs: "no such team"
HIDDEN_IMAGE = {"outsider": 400}  # an image id they do not see: the field is invalid

CASES = [
    Case("api root", "GET", lambda w: "/api/v1/"),
    Case("schema", "GET", lambda w: "/api/schema/"),
    Case("images", "GET", lambda w: "/api/v1/images/"),
    Case("image", "GET", lambda w: f"/api/v1/images/{w.app.pk}/", may=ALPHA),
    Case("another team's image", "GET", lambda w: f"/api/v1/images/{w.secret.pk}/", may=BETA),
    Case("a public image", "GET", lambda w: f"/api/v1/images/{w.public.pk}/"),
    Case("delete plan", "GET", lambda w: f"/api/v1/images/{w.app.pk}/delete-plan/", may=ALPHA),
    Case("image files", "GET", lambda w: f"/api/v1/images/{w.app.pk}/files/?path=/etc", may=ALPHA),
    Case("wasted space", "GET", lambda w: f"/api/v1/images/{w.app.pk}/wasted/", may=ALPHA),
    Case(
        "another team's wasted", "GET", lambda w: f"/api/v1/images/{w.secret.pk}/wasted/", may=BETA
    ),
    Case("image tree", "GET", lambda w: f"/api/v1/images/{w.app.pk}/tree/?path=/", may=ALPHA),
    Case("another team's tree", "GET", lambda w: f"/api/v1/images/{w.secret.pk}/tree/", may=BETA),
    Case(
        "delete an image",
        "DELETE",
        lambda w: f"/api/v1/images/{w.spare.pk}/",
        may=MAINTAINERS,
        sees=ALPHA,
    ),
    Case(
        "pull",
        "POST",
        lambda w: "/api/v1/images/pull/",
        lambda w: {"reference": f"{REPO}/alpha/app:2", "team": "alpha"},
        may=ALPHA,
        ok=(202,),
        refused=NOT_OURS,
    ),
    Case(
        "push",
        "POST",
        lambda w: f"/api/v1/images/{w.app.pk}/push/",
        lambda w: {"reference": f"{REPO}/alpha/app:2", "team": "alpha"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(202,),
    ),
    Case(
        "save",
        "POST",
        lambda w: f"/api/v1/images/{w.app.pk}/save/",
        lambda w: {},
        may=ALPHA,
        ok=(202,),
    ),
    Case(
        "import",
        "POST",
        lambda w: "/api/v1/images/import/",
        lambda w: {"archive": SimpleUploadedFile("a.tar", b"an archive"), "team": "alpha"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(202,),
        refused=NOT_OURS,
        multipart=True,
    ),
    Case("a shared layer", "GET", lambda w: f"/api/v1/layers/{_chain(w.base)}/"),
    Case("a layer", "GET", lambda w: f"/api/v1/layers/{_chain(w.top)}/", may=ALPHA),
    Case(
        "another team's layer", "GET", lambda w: f"/api/v1/layers/{_chain(w.secret_top)}/", may=BETA
    ),
    Case("layer images", "GET", lambda w: f"/api/v1/layers/{_chain(w.top)}/images/", may=ALPHA),
    Case("layer files", "GET", lambda w: f"/api/v1/layers/{_chain(w.top)}/files/", may=ALPHA),
    Case("packages", "GET", lambda w: "/api/v1/packages/?name=openssl&op=%3C&version=3.0.15"),
    Case("a package", "GET", lambda w: f"/api/v1/packages/{_package(w.app)}/", may=ALPHA),
    Case("files", "GET", lambda w: "/api/v1/files/?pattern=*/libssl.so.3"),
    Case(
        "another team's package",
        "GET",
        lambda w: f"/api/v1/packages/{_package(w.secret)}/",
        may=BETA,
    ),
    Case("repositories", "GET", lambda w: "/api/v1/repositories/"),
    Case(
        "repository",
        "GET",
        lambda w: f"/api/v1/repositories/{w.app_tag.repository_id}/",
        may=ALPHA,
    ),
    Case("tags", "GET", lambda w: "/api/v1/tags/"),
    Case("tag", "GET", lambda w: f"/api/v1/tags/{w.app_tag.pk}/", may=ALPHA),
    Case(
        "tag an image",
        "POST",
        lambda w: "/api/v1/tags/",
        lambda w: {"image": w.app.pk, "reference": f"{REPO}/alpha/app:2", "team": "alpha"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(201,),
        refused=HIDDEN_IMAGE,
    ),
    Case(
        "move a tag",
        "PATCH",
        lambda w: f"/api/v1/tags/{w.app_tag.pk}/",
        lambda w: {"image": w.spare.pk},
        may=DEVELOPERS,
        sees=ALPHA,
    ),
    Case(
        "move a tag (PUT)",
        "PUT",
        lambda w: f"/api/v1/tags/{w.app_tag.pk}/",
        lambda w: {"image": w.spare.pk},
        may=DEVELOPERS,
        sees=ALPHA,
    ),
    Case(
        "delete a tag",
        "DELETE",
        lambda w: f"/api/v1/tags/{w.app_tag.pk}/",
        may=MAINTAINERS,
        sees=ALPHA,
        ok=(204,),
    ),
    Case("containers", "GET", lambda w: "/api/v1/containers/"),
    Case("container", "GET", lambda w: "/api/v1/containers/work/", may=ALPHA),
    Case(
        "create a container",
        "POST",
        lambda w: "/api/v1/containers/",
        lambda w: {"image": w.app.pk, "team": "alpha", "name": "new"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(201,),
        refused=HIDDEN_IMAGE,
    ),
    Case("container files", "GET", lambda w: "/api/v1/containers/work/files/?path=/", may=ALPHA),
    Case(
        "read a file",
        "GET",
        lambda w: "/api/v1/containers/work/files/content/?path=/etc/os-release",
        may=ALPHA,
    ),
    Case(
        "write a file",
        "POST",
        lambda w: "/api/v1/containers/work/files/",
        lambda w: {"path": "/etc/new", "content": "hi"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(201,),
    ),
    Case(
        "upload a file",
        "POST",
        lambda w: "/api/v1/containers/work/files/upload/",
        lambda w: {"path": "/etc/up", "file": SimpleUploadedFile("up", b"data")},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(201,),
        multipart=True,
    ),
    Case(
        "delete a path",
        "DELETE",
        lambda w: "/api/v1/containers/work/files/?path=/etc/os-release",
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(204,),
    ),
    Case(
        "exec",
        "POST",
        lambda w: "/api/v1/containers/work/exec/",
        lambda w: {"command": ["true"]},
        may=DEVELOPERS,
        sees=ALPHA,
        # 400 where the host cannot run commands (not root, no runc): the refusal is not ours
        ok=(200, 400),
    ),
    Case("diff", "GET", lambda w: "/api/v1/containers/work/diff/", may=ALPHA),
    Case(
        "commit",
        "POST",
        lambda w: "/api/v1/containers/work/commit/",
        lambda w: {"repository": f"{REPO}/alpha/app:3"},
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(202,),
    ),
    Case(
        "remove a container",
        "DELETE",
        lambda w: "/api/v1/containers/work/",
        may=DEVELOPERS,
        sees=ALPHA,
        ok=(204,),
    ),
    Case("jobs", "GET", lambda w: "/api/v1/jobs/"),
    Case("job", "GET", lambda w: f"/api/v1/jobs/{w.job.pk}/", may=ALPHA),
    Case(
        "cancel a job",
        "POST",
        lambda w: f"/api/v1/jobs/{w.job.pk}/cancel/",
        lambda w: {},
        may=DEVELOPERS,
        sees=ALPHA,
    ),
    Case("registry logins", "GET", lambda w: "/api/v1/registry-logins/"),
    Case("registry login", "GET", lambda w: f"/api/v1/registry-logins/{w.login.pk}/", may=ALPHA),
    Case(
        "log in to a registry",
        "POST",
        lambda w: "/api/v1/registry-logins/",
        lambda w: {"team": "alpha", "host": "127.0.0.1:1", "username": "u", "password": "p"},
        may=MAINTAINERS,
        sees=ALPHA,
        # allowed, the login is checked against the registry: nothing answers on port 1
        ok=(503,),
        refused=NOT_OURS,
    ),
    Case(
        "log out of a registry",
        "DELETE",
        lambda w: f"/api/v1/registry-logins/{w.login.pk}/",
        may=MAINTAINERS,
        sees=ALPHA,
        ok=(204,),
    ),
    Case("teams", "GET", lambda w: "/api/v1/teams/"),
    Case("team", "GET", lambda w: "/api/v1/teams/alpha/", may=ALPHA),
    Case("members", "GET", lambda w: "/api/v1/teams/alpha/members/", may=ALPHA),
    Case(
        "add a member",
        "POST",
        lambda w: "/api/v1/teams/alpha/members/",
        lambda w: {"username": "outsider", "role": "viewer"},
        may=OWNERS,
        sees=ALPHA,
    ),
    Case(
        "remove a member",
        "DELETE",
        lambda w: "/api/v1/teams/alpha/members/viewer/",
        may=OWNERS,
        sees=ALPHA,
        ok=(204,),
    ),
    Case("tokens", "GET", lambda w: "/api/v1/tokens/"),
    Case("a robot's token", "GET", lambda w: f"/api/v1/tokens/{w.robot.pk}/", may=MAINTAINERS),
    Case(
        "revoke a robot's token",
        "DELETE",
        lambda w: f"/api/v1/tokens/{w.robot.pk}/",
        may=MAINTAINERS,
        ok=(204,),
    ),
    Case(
        "a personal token",
        "POST",
        lambda w: "/api/v1/tokens/",
        lambda w: {"name": "mine", "scope": "read"},
        ok=(201,),
    ),
    Case(
        "a robot token",
        "POST",
        lambda w: "/api/v1/tokens/",
        lambda w: {"name": "deploy", "scope": "read", "team": "alpha"},
        may=MAINTAINERS,
        sees=ALPHA,
        ok=(201,),
        refused=NOT_OURS,
    ),
    Case("audit log", "GET", lambda w: "/api/v1/audit/"),
    Case("disk use", "GET", lambda w: "/api/v1/system/df/"),
    Case("search", "GET", lambda w: "/api/v1/search/?q=app"),
]


def _client(world: World, principal: str) -> APIClient:
    return APIClient() if principal == "anonymous" else token_client(world.users[principal])


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_permission_matrix(world: World, case: Case, principal: str, settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_RETRIES = 0  # a registry that does not answer: at once
    client = _client(world, principal)
    body = case.body(world) if case.body is not None else None
    send = getattr(client, case.method.lower())
    kwargs: dict[str, Any] = {"format": "multipart" if case.multipart else "json"}
    response = send(case.url(world), body, **kwargs) if body is not None else send(case.url(world))
    expected = case.expected(principal)
    detail = b"" if response.streaming else response.content[:300]
    assert response.status_code in expected, f"{principal}: {response.status_code} {detail!r}"
    if response.status_code >= 400 and expected != (200, 400):
        assert set(response.json()["error"]) >= {"code", "message"}


def test_every_endpoint_of_the_schema_is_in_the_matrix(world: World) -> None:
    """A new endpoint must be added to the table: the schema's operations are all there."""
    schema = token_client(world.users["staff"]).get("/api/schema/").json()
    operations = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    covered = {
        (method, template)
        for case in CASES
        for method, template in operations
        if method == case.method and _matches(template, case.url(world).split("?")[0])
    }
    missing = sorted(op for op in operations if op not in covered and op not in UNTESTED)
    assert not missing, f"not in the permission matrix: {missing}"


# operations checked elsewhere: they reach a registry or need a finished job
UNTESTED = {
    ("GET", "/api/v1/jobs/{id}/download/"),  # needs a finished save: test_images
}


def _matches(template: str, path: str) -> bool:
    parts, given = template.strip("/").split("/"), path.strip("/").split("/")
    if len(parts) != len(given):
        return False
    return all(
        p == g or (p.startswith("{") and p.endswith("}")) for p, g in zip(parts, given, strict=True)
    )
