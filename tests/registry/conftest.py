"""Real registries on loopback, seeded with images the tests build, and eager Celery."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.oci import Image, Index, LayerBlob, make_layer, write_layout
from tests.support.peers import require
from tests.support.proxy import FaultyProxy
from tests.support.registry import REGISTRY_BIN, SKOPEO_BIN, Registry, run_registry
from workers.celery import app


def _need_peers() -> None:
    missing = [n for n, b in (("docker-registry", REGISTRY_BIN), ("skopeo", SKOPEO_BIN)) if not b]
    require(not missing, f"not installed: {', '.join(missing)} (Debian packages)")


@dataclass
class Seed:
    """The test images and the layout they were pushed from."""

    layout: Path
    base: LayerBlob
    app: LayerBlob
    other: LayerBlob
    arm: LayerBlob
    app_image: Image
    other_image: Image
    multi: Index


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    _need_peers()
    base = make_layer(
        {
            "bin": None,
            "bin/sh": _random(1, 300_000),
            "etc": None,
            "etc/os-release": b"ID=layerhub-test\n",
            "etc/motd": b"welcome\n",
            "opt": None,
            "opt/old": None,
            "opt/old/a": b"a",
            "usr": None,
            "usr/lib": None,
            "usr/lib/libbig.so": _random(2, 400_000),
        }
    )
    app_layer = make_layer(
        {
            "app": None,
            "app/run": b"#!/bin/sh\necho app\n",
            "etc": None,
            "etc/motd": "whiteout",
            "opt": None,
            "opt/old": None,
            "opt/old/.wh..wh..opq": b"",
            "opt/old/b": b"b",
        },
        "zstd",
    )
    other_layer = make_layer({"srv": None, "srv/data": _random(3, 50_000)})
    arm_layer = make_layer({"arm": None, "arm/only": b"arm64\n"})
    app_image = Image([base, app_layer])
    other_image = Image([base, other_layer])
    multi = Index([Image([base, app_layer], "amd64"), Image([base, arm_layer], "arm64", "v8")])
    layout = write_layout(
        tmp_path_factory.mktemp("layout"),
        {"v1": app_image, "other": other_image, "multi": multi},
    )
    return Seed(layout, base, app_layer, other_layer, arm_layer, app_image, other_image, multi)


def _seeded(root: Path, seed: Seed, auth: str) -> Iterator[Registry]:
    with run_registry(root, auth=auth) as registry:
        registry.push_layout(seed.layout, "v1", "team/app")
        if auth == "none":
            registry.push_layout(seed.layout, "other", "team/other")
            registry.push_layout(seed.layout, "multi", "team/multi", all_platforms=True)
        yield registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, seed: Seed) -> Iterator[Registry]:
    """An anonymous registry holding team/app:v1, team/other:other, team/multi:multi."""
    yield from _seeded(tmp_path_factory.mktemp("registry"), seed, "none")


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory, seed: Seed) -> Iterator[Registry]:
    """A registry behind htpasswd basic auth holding team/app:v1."""
    yield from _seeded(tmp_path_factory.mktemp("registry-basic"), seed, "basic")


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, seed: Seed) -> Iterator[Registry]:
    """A registry behind a bearer-token service holding team/app:v1."""
    yield from _seeded(tmp_path_factory.mktemp("registry-token"), seed, "token")


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultyProxy]:
    """The anonymous registry behind a front that can cut or slow blob downloads."""
    front = FaultyProxy(registry.host)
    yield front
    front.stop()


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (errors in layerhub's own code propagate)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved
