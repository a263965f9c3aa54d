"""Garbage collection run again and again, in a process of its own, while a real worker pulls
from the test registry and commits, and images sharing those layers are deleted meanwhile:
afterwards every image is whole and ``store_verify`` finds nothing."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pytest_django import Settings

from layerhub.containers.services import container_commit, container_create, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.errors import Conflict, ImageNotFound
from layerhub.images.gc import store_gc
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Blob, Image
from layerhub.images.services import image_pull
from layerhub.images.services.transfer import image_remove
from layerhub.images.verify import store_verify
from layerhub.jobs.models import Job
from layerhub.jobs.presence import workers_present
from layerhub.jobs.services import job_cancel
from tests.conftest import delete_queue_keys
from tests.registry.conftest import Seed
from tests.support.database import database_url
from tests.support.oci import Image as OciImage
from tests.support.oci import Index, LayerBlob, make_layer, write_layout
from tests.support.processes import stop_group
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry
from tests.support.teams import default_team
from workers import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("blob_driver")]

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 8
# the collector's loop: collect, note what it freed, again, until told to stop
GC_LOOP = """
import os, sys, time
import django
django.setup()
from layerhub.images.gc import store_gc
runs = freed = items = 0
while not os.path.exists(sys.argv[1]):
    report = store_gc()
    runs += 1
    freed += report.freed_bytes
    items += sum(1 for item in report.items if item.what in ("blob", "snapshot"))
    time.sleep(0.02)
print(runs, freed, items, flush=True)
"""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def env(broker: str, settings: Settings) -> dict[str, str]:
    """The environment of the worker and the collector: this test's database, store and
    queue, on the broker this process' Celery app sends to."""
    return {
        **os.environ,
        "REDIS_URL": str(app.conf.broker_url),
        "LAYERHUB_QUEUE": settings.LAYERHUB_QUEUE,
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # whatever no live process holds in tmp/ goes at once: the flocks are all that
        # protect in-flight downloads and unpacks here
        "LAYERHUB_GC_GRACE": "0s",
        "LAYERHUB_GC_KEEP_UNTAGGED": "off",
        "DJANGO_SETTINGS_MODULE": "layerhub.settings",
    }


@pytest.fixture
def worker(env: dict[str, str], settings: Settings) -> Iterator[None]:
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-c", "2", "-l", "warning"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_until(lambda: bool(workers_present(settings.LAYERHUB_QUEUE)), 60, "the worker")
        yield
    finally:
        stop_group(proc)
        client = redis.Redis.from_url(str(app.conf.broker_url))
        delete_queue_keys(client, settings.LAYERHUB_QUEUE)
        client.close()


def _variant(layers: list[LayerBlob], name: str) -> OciImage:
    # its own config (the history names it), so its own image row, over shared layers
    return OciImage(layers, history=[{"created_by": f"{name} {i}"} for i in range(len(layers))])


@dataclass(frozen=True)
class Round:
    """One round's images (references), each over the base, the app or the other layer, and
    one of a few layers the rounds share; ``slow`` is pulled through the slow front and
    cancelled mid-download."""

    slow: str
    fast: tuple[str, str]


@pytest.fixture
def rounds(registry: Registry, proxy: FaultyProxy, seed: Seed, tmp_path: Path) -> list[Round]:
    """The images of every round, pushed to the registry. The same layers come back round
    after round under other images, so a layer deleted with one round's images (or left by
    a cancelled pull) is what the next round's pulls are about to reference."""
    shared = [
        make_layer({"shared": None, f"shared/{n}": random.Random(n).randbytes(30_000)})
        for n in range(3)
    ]
    pick = random.Random(9)
    tagged: dict[str, OciImage | Index] = {}
    for k in range(ROUNDS):
        for name in ("slow", "a", "b"):
            middle = pick.choice([seed.app, seed.other])
            tagged[f"{name}{k}"] = _variant([seed.base, middle, pick.choice(shared)], f"{name}{k}")
    layout = write_layout(tmp_path / "rounds", tagged)
    for tag in tagged:
        registry.push_layout(layout, tag, "gc/stress")
    return [
        Round(
            slow=f"{proxy.host}/gc/stress:slow{k}",
            fast=(f"{registry.host}/gc/stress:a{k}", f"{registry.host}/gc/stress:b{k}"),
        )
        for k in range(ROUNDS)
    ]


def ended(job: Job) -> bool:
    job.refresh_from_db()
    return job.done and all(child.done for child in job.children.all())


def wait_ended(job: Job) -> Job:
    wait_until(lambda: ended(job), 120, f"{job.kind} job {job.pk} ({job.reference})")
    return job


def succeeded(job: Job) -> None:
    wait_ended(job)
    assert job.state == Job.State.SUCCEEDED, (job.kind, job.reference, job.error)
    for child in job.children.all():
        assert child.state == Job.State.SUCCEEDED, (child.kind, child.reference, child.error)


def cancel_mid_download(job: Job, after: float) -> None:
    """Cancel the pull ``after`` seconds into its downloads (if it has not ended by then):
    what it downloaded whole stays in the store, leased by nothing once it has stopped."""
    wait_until(lambda: ended(job) or bool(job.progress), 60, f"pull {job.pk} to start")
    time.sleep(after)
    job.refresh_from_db()
    if job.live:
        with contextlib.suppress(Conflict):  # it ended meanwhile
            job_cancel(job=job)
    wait_ended(job)
    assert job.state in (Job.State.CANCELLED, Job.State.SUCCEEDED), job.error


def test_gc_in_a_loop_while_pulls_and_commits_share_what_it_deletes(
    registry: Registry,
    proxy: FaultyProxy,
    seed: Seed,
    env: dict[str, str],
    worker: None,
    rounds: list[Round],
    tmp_path: Path,
) -> None:
    base = f"{registry.host}/team/app:v1"
    succeeded(image_pull(team=default_team(), reference=base))
    container = container_create(team=default_team(), image=base, name="busy")
    proxy.delay = 1.0  # each blob body through the slow front waits: its pulls are in flight
    stop = tmp_path / "stop-gc"
    collector = subprocess.Popen(
        [sys.executable, "-c", GC_LOOP, str(stop)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    pick = random.Random(3)
    cancelled = 0
    try:
        previous: list[str] = []
        for k, round_ in enumerate(rounds):
            container_write_file(container=container, path=f"/round-{k}", data=b"r" * (k + 1))
            slow = image_pull(team=default_team(), reference=round_.slow)
            jobs = [
                *(
                    image_pull(team=default_team(), reference=reference)
                    for reference in round_.fast
                ),
                container_commit(container=container, repository=f"localhost/gc/commit:{k}"),
            ]
            # while those run, the last images of some of the layers they reference go
            for reference in previous:
                with contextlib.suppress(ImageNotFound):  # a cancelled pull recorded none
                    image_remove(image=reference, force=True)
            cancel_mid_download(slow, after=pick.uniform(0.1, 0.8))
            slow.refresh_from_db()
            cancelled += slow.state == Job.State.CANCELLED
            for job in jobs:
                succeeded(job)
            previous = [round_.slow, *round_.fast, f"localhost/gc/commit:{k}"]
    finally:
        stop.touch()
        try:
            out, _ = collector.communicate(timeout=120)
        finally:
            stop_group(collector)
    assert collector.returncode == 0
    runs, freed, items = (int(n) for n in out.decode().split())
    assert runs >= ROUNDS  # it ran throughout, not once
    assert cancelled > 0  # some pulls stopped mid-download, leaving blobs no row names
    assert freed > 0  # and the collector deleted such leftovers while the next pulls ran
    assert items > 0

    store_gc()  # what the last round's leases still held
    store = get_store()
    images = list(Image.objects.all())
    assert len(images) >= 1 + 3  # the container's image, and the last round's three or four
    for image in images:
        for digest in (image.manifest_digest, image.config_digest):
            assert store.blobs.has(digest)
            assert Blob.objects.filter(digest=digest).exists()
        for row in image.image_layers.select_related("layer"):
            assert store.blobs.has(row.layer.digest), row.layer.digest
            assert Blob.objects.filter(digest=row.layer.digest).exists()
            assert row.layer.unpacked_at is not None, row.layer.chain_id
            assert store.snapshots.exists(row.layer.chain_id), row.layer.chain_id
    report = store_verify()
    assert report.findings == [], [f.line() for f in report.findings]
    assert report.held == []
    assert image_lookup(f"localhost/gc/commit:{ROUNDS - 1}") is not None
