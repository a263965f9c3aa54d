"""A fleet on one machine: three real workers as hosts A, B and C, each with a store of its
own (no blobs on disk: they share them only through the object store, a real SeaweedFS), on
the suite's database (PostgreSQL in CI) and a Redis queue of this test's own.

The hosts pull, build snapshots from the object store, commit and push; a garbage collection
on one host runs while the others pull and commit; a host killed during a commit leaves a
job that says why it ended and nothing half-written in the object store.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from celery import current_app
from django.db import connections
from django.test import Client
from pytest_django import Settings

from layerhub.containers.models import Container
from layerhub.containers.services import container_commit, container_create, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.digest import chain_ids, digest_hex
from layerhub.images.leases import job_lease
from layerhub.images.models import Blob, Image, Snapshot
from layerhub.images.removal import blob_remove_unused
from layerhub.images.services import image_pull
from layerhub.images.services.gc import store_gc_start
from layerhub.images.services.transfer import image_push, image_remove, image_save
from layerhub.images.services.verify import store_verify_report, store_verify_start
from layerhub.jobs.models import Job
from tests.conftest import S3Bucket, delete_queue_keys
from tests.registry.conftest import Seed
from tests.support.database import database_url
from tests.support.processes import stop_group
from tests.support.registry import SKOPEO_BIN, Registry
from tests.support.teams import default_team
from tests.support.workers import job_ended, start_host_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HOSTS = ("A", "B", "C")
# the timing knobs the workers and this process share, so a lost host shows within seconds
TIMINGS = {
    "LAYERHUB_JOB_HEARTBEAT": "0.5",
    "LAYERHUB_JOB_DEAD_AFTER": "3",
    "LAYERHUB_HOST_GONE_AFTER": "2",
}


class Fleet:
    """The hosts' workers and stores."""

    def __init__(self, root: Path, env: dict[str, str], queue: str) -> None:
        self.root = root
        self.env = env
        self.queue = queue
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def store(self, name: str) -> Path:
        return self.root / name / "store"

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = {**self.env, "LAYERHUB_STORE": str(self.store(name))}
        self.workers[name] = start_host_worker(name, env, queue=self.queue)
        return self.workers[name]

    def kill(self, name: str) -> None:
        worker = self.workers[name]
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


@pytest.fixture
def fleet(broker: str, s3_blobs: S3Bucket, settings: Settings, tmp_path: Path) -> Iterator[Fleet]:
    settings.REDIS_URL = str(current_app.conf.broker_url)
    settings.LAYERHUB_HOST = "web"  # this process: a web server holding nothing
    settings.LAYERHUB_HOST_CALL_TIMEOUT = 60.0
    for name, value in TIMINGS.items():
        setattr(settings, name, float(value))
    env = {
        **os.environ,  # LAYERHUB_BLOBS and AWS_*, set by s3_blobs
        **TIMINGS,
        "REDIS_URL": settings.REDIS_URL,
        "LAYERHUB_QUEUE": settings.LAYERHUB_QUEUE,
        "DATABASE_URL": database_url(),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "DJANGO_SETTINGS_MODULE": "layerhub.settings",
    }
    env.pop("LAYERHUB_SNAPSHOTS", None)
    fleet = Fleet(tmp_path, env, settings.LAYERHUB_QUEUE)
    try:
        for name in HOSTS:
            fleet.start(name)
        yield fleet
    finally:
        for worker in fleet.workers.values():
            stop_group(worker)
        client = redis.Redis.from_url(settings.REDIS_URL)
        delete_queue_keys(client, settings.LAYERHUB_QUEUE)
        client.close()
        for name in HOSTS:
            assert not (fleet.store(name) / "blobs").exists(), f"host {name} kept blobs on disk"


@contextmanager
def on_host(settings: Settings, name: str) -> Iterator[None]:
    """Jobs queued meanwhile (pulls, pushes, exports, gc: jobs any host may run) go to host
    ``name``'s own queue, so that the test knows which host ran them."""
    queue = settings.LAYERHUB_QUEUE
    current_app.conf.task_default_queue = f"{queue}.host.{name}"
    settings.LAYERHUB_QUEUE = f"{queue}.host.{name}"
    try:
        yield
    finally:
        settings.LAYERHUB_QUEUE = queue
        current_app.conf.task_default_queue = queue


def succeeded(job: Job, timeout: float = 120) -> Job:
    wait_until(job_ended(job), timeout, f"job {job.pk} ({job.kind})")
    assert job.state == Job.State.SUCCEEDED, job.error
    return job


def snapshot_hosts(image: Image) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for row in Snapshot.objects.filter(layer__image_layers__image=image).select_related("layer"):
        found.setdefault(row.host, set()).add(row.layer.chain_id)
    return found


def skopeo(*args: str) -> str:
    assert SKOPEO_BIN is not None
    done = subprocess.run(
        [SKOPEO_BIN, *args], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def assert_nothing_referenced_lost(bucket: S3Bucket) -> None:
    """Every Blob row's object is in the bucket, with its size; every image's blobs have rows."""
    objects = bucket.objects()
    for digest, size in Blob.objects.values_list("digest", "size"):
        assert objects.get(digest_hex(digest)) == size, f"blob {digest} lost"
    for image in Image.objects.all():
        wanted = {image.manifest_digest, image.config_digest}
        wanted |= set(image.image_layers.values_list("layer__digest", flat=True))
        missing = {d for d in wanted if digest_hex(d) not in objects}
        assert not missing, f"image {image.manifest_digest} lost {missing}"


def test_three_hosts_share_blobs_only_through_the_object_store(
    fleet: Fleet,
    registry: Registry,
    seed: Seed,
    s3_blobs: S3Bucket,
    settings: Settings,
    tmp_path: Path,
    admin_client: Client,
) -> None:
    team = default_team()
    # a pull on A: its blobs go to the object store, its snapshots are A's
    with on_host(settings, "A"):
        pull = succeeded(image_pull(team=team, reference=f"{registry.host}/team/app:v1"))
    image = pull.image
    assert image is not None
    chains = chain_ids([seed.base.diff_id, seed.app.diff_id])
    assert snapshot_hosts(image) == {"A": set(chains)}
    assert {digest_hex(seed.base.digest), digest_hex(seed.app.digest)} <= set(s3_blobs.objects())

    # this web server holds no snapshot: it reads the image's and the layer's files on A
    script = b"#!/bin/sh\necho app\n"
    listing = admin_client.get(f"/api/v1/layers/{chains[-1]}/files/", {"path": "/app"})
    assert [(e["name"], e["change"]) for e in listing.json()["entries"]] == [("run", "A")]
    files = f"/layers/image/{image.pk}/files/"
    assert "echo app" in admin_client.get(files, {"path": "/app/run"}).content.decode()
    download = admin_client.get(files, {"path": "/app/run", "download": "1"})
    assert b"".join(download.streaming_content) == script  # type: ignore[attr-defined]
    assert get_store().snapshots.chain_ids() == []  # nothing was unpacked here

    # a container on B: B builds its snapshots from the object store
    box = container_create(image=image.manifest_digest, team=team, name="box", host="B")
    assert box.host == "B"
    assert snapshot_hosts(image) == {"A": set(chains), "B": set(chains)}
    run = fleet.store("B") / "snapshots" / digest_hex(chains[-1]) / "fs" / "app" / "run"
    assert run.read_bytes() == b"#!/bin/sh\necho app\n"

    # a file written and committed on B
    container_write_file(container=box, path="/app/note", data=b"made on B\n")
    commit = succeeded(container_commit(container=box, repository="localhost/fleet:1"))
    assert commit.host == "B"
    committed = commit.image
    assert committed is not None
    top = committed.image_layers.order_by("-position").select_related("layer").get(position=2)
    assert digest_hex(top.layer.digest) in s3_blobs.objects()

    # pushed from C, which holds none of it on disk, and read back by skopeo
    remote = f"{registry.host}/fleet/committed:1"
    with on_host(settings, "C"):
        succeeded(image_push(image=committed.manifest_digest, team=team, reference=remote))
    seen = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{remote}"))
    assert seen["Layers"] == list(
        committed.image_layers.order_by("position").values_list("layer__digest", flat=True)
    )
    copied = tmp_path / "copied"
    skopeo("copy", "--src-tls-verify=false", f"docker://{remote}", f"dir:{copied}")
    layer = (copied / digest_hex(top.layer.digest)).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        member = t.extractfile("app/note")
        assert member is not None
        assert member.read() == b"made on B\n"
    assert not (fleet.store("C") / "snapshots").exists() or not any(
        (fleet.store("C") / "snapshots").iterdir()
    )

    # garbage to collect: an image pulled on C and removed
    with on_host(settings, "C"):
        other = succeeded(image_pull(team=team, reference=f"{registry.host}/team/other:other"))
    assert other.image is not None
    on_c = fleet.store("C") / "snapshots"
    other_top = on_c / digest_hex(chain_ids([seed.base.diff_id, seed.other.diff_id])[-1])
    assert other_top.is_dir()
    # rmi from this web server: the rows go here, C is asked to remove its snapshots
    image_remove(image=other.image.manifest_digest, force=True)
    wait_until(lambda: not other_top.exists(), 60, "host C to remove the snapshot rmi left")
    assert (on_c / digest_hex(chains[0])).is_dir()  # the base: app:v1 still uses it

    # gc on A while B commits and C pulls and commits
    side = container_create(image=image.manifest_digest, team=team, name="side", host="C")
    container_write_file(container=side, path="/side", data=os.urandom(1 << 20))
    container_write_file(container=box, path="/app/more", data=os.urandom(1 << 20))
    running = [
        container_commit(container=box, repository="localhost/fleet:2"),
        container_commit(container=side, repository="localhost/side:1"),
    ]
    with on_host(settings, "C"):
        running.append(image_pull(team=team, reference=f"{registry.host}/team/multi:multi"))
    with on_host(settings, "A"):
        gc = store_gc_start()
    for job in [*running, gc]:
        succeeded(job)
    assert {job.host for job in running[:2]} == {"B", "C"}
    assert_nothing_referenced_lost(s3_blobs)
    assert digest_hex(seed.other.digest) not in s3_blobs.objects()  # collected
    for image_row in Image.objects.all():
        with on_host(settings, "A"):
            path = str(tmp_path / f"{image_row.pk}.tar")
            succeeded(image_save(images=[image_row.manifest_digest], path=path))
        skopeo("inspect", f"docker-archive:{path}")

    # verify on each host: the objects against the Blob rows, and the host's own snapshots and
    # containers against its rows (another host's are on that host's disk)
    for name in HOSTS:
        with on_host(settings, name):
            verify = succeeded(store_verify_start())
        report = store_verify_report(verify)
        assert report is not None
        assert report.blobs == Blob.objects.count()
        assert report.containers == Container.objects.filter(host=name).count()

    # B killed during a commit: the job fails saying why; nothing of it stays in the bucket
    for i in range(3):
        container_write_file(container=box, path=f"/big{i}", data=os.urandom(16 << 20))
    before = set(s3_blobs.objects())
    doomed = container_commit(container=box, repository="localhost/fleet:doomed")

    def started() -> bool:
        doomed.refresh_from_db()
        return doomed.state != Job.State.QUEUED

    wait_until(started, 60, "the commit to start on B")
    assert doomed.state == Job.State.RUNNING, doomed.error
    fleet.kill("B")
    wait_until(job_ended(doomed), 60, "the commit of the killed host to end")
    assert doomed.state == Job.State.FAILED
    # its worker is gone: re-queued for its host, which is unavailable, so it fails saying so
    assert doomed.error.startswith("host B is unavailable: no heartbeat from its worker")
    assert not Image.objects.filter(tags__name="doomed").exists()
    assert Container.objects.filter(name="box", host="B").exists()
    with on_host(settings, "A"):
        succeeded(store_gc_start())
    objects = set(s3_blobs.objects())
    rows = {digest_hex(d) for d in Blob.objects.values_list("digest", flat=True)}
    assert objects <= before | rows
    assert objects == rows, f"objects without a Blob row: {objects - rows}"
    assert s3_blobs.uploads() == []
    assert_nothing_referenced_lost(s3_blobs)


def test_a_lease_another_host_writes_during_a_blob_delete_waits_for_it(
    s3_blobs: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blob locks are each host's own files: with blobs in the object store, a host's delete
    (gc, rmi) and another host's job leasing the blob and judging it "already there" are
    ordered by the database instead. The job's lease waits for the delete; it then finds
    the blob gone (and fetches it again) rather than counting on an object being deleted."""
    store = get_store()
    blob = store.blobs.put_bytes(b"a layer two hosts want\n")
    Blob.objects.create(digest=blob.digest, size=blob.size, kind=Blob.Kind.LAYER)
    other_hosts_job = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    deleting, release = threading.Event(), threading.Event()
    real_delete = store.blobs.delete

    def slow_delete(digest: str) -> bool:
        deleting.set()
        assert release.wait(30)
        return real_delete(digest)

    monkeypatch.setattr(store.blobs, "delete", slow_delete)
    removed: list[bool] = []
    seen: list[bool] = []

    def collect() -> None:
        try:
            removed.append(blob_remove_unused(blob.digest))
        finally:
            connections.close_all()

    def other_host() -> None:
        try:
            job_lease(job=other_hosts_job, keys=[blob.digest])
            seen.append(store.blobs.has(blob.digest))  # "already there?"
        finally:
            connections.close_all()

    gc = threading.Thread(target=collect)
    gc.start()
    assert deleting.wait(30)
    job = threading.Thread(target=other_host)
    job.start()
    job.join(1.0)
    waited = job.is_alive()
    release.set()
    gc.join(30)
    job.join(30)
    assert removed == [True]
    assert waited, "the lease was written while the blob was being deleted"
    assert seen == [False]
    assert blob.digest not in {f"sha256:{name}" for name in s3_blobs.objects()}
