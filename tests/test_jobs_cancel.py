"""Cancelling jobs: the service, the states, and where the engine stops (a pull at its next
chunk, an unpack at its next layer, an export and an import at their next chunk), leaving
nothing half-written."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, cast

import pytest
from django.core.management.base import CommandError
from django.utils import timezone
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine import pipeline
from layerhub.engine.archive import import_archive
from layerhub.engine.cancel import Cancelled, StopFn
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import Conflict, ManifestUnknown
from layerhub.engine.export import ExportImage, write_docker_archive
from layerhub.engine.manifest import Descriptor, ImageManifest, parse_manifest
from layerhub.engine.pull import unpack
from layerhub.engine.push import push_image
from layerhub.engine.registry import RegistryClient
from layerhub.engine.store import Store
from layerhub.images.leases import lease_held
from layerhub.images.models import Image, Layer
from layerhub.images.services import image_pull, image_pull_run, transfer
from layerhub.images.services.retry import image_unpack_retry
from layerhub.jobs.follow import follow_to_end
from layerhub.jobs.models import Job, Lease
from layerhub.jobs.services import CancelWatch, JobCancelled, JobProgress, job_cancel, job_run
from tests.registry.conftest import Seed, eager, proxy, registry, seed  # noqa: F401 - fixtures
from tests.registry.test_worker import ROOT, env, wait_for, worker, workers  # noqa: F401
from tests.support.oci import Image as OciImage
from tests.support.oci import make_layer, write_layout
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry
from tests.support.teams import default_team

db = pytest.mark.django_db
real_db = pytest.mark.django_db(transaction=True)


def queued(**fields: object) -> Job:
    defaults: dict[str, object] = {"kind": Job.Kind.PULL, "reference": "127.0.0.1:1/team/app:v1"}
    return Job.objects.create(**{**defaults, **fields})


def running(**fields: object) -> Job:
    now = timezone.now()
    base: dict[str, object] = {"started_at": now, "heartbeat_at": now, "attempts": 1}
    return queued(state=Job.State.RUNNING, **{**base, **fields})


def tmp_entries() -> list[Path]:
    return list(get_store().tmp.iterdir())


# -- the service ------------------------------------------------------------------------------


@db
def test_a_queued_job_cancelled_never_runs() -> None:
    job = queued()
    job_cancel(job=job)
    assert job.state == Job.State.CANCELLED
    assert job.finished_at is not None
    image_pull_run(job_id=job.pk)  # its task arrives after all
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    assert job.started_at is None
    assert job.attempts == 0
    assert job.progress == []


@db
def test_a_running_job_is_asked_to_stop_and_its_children_are_cancelled() -> None:
    job = running()
    child = queued(kind=Job.Kind.UNPACK, parent=job)
    job_cancel(job=job)
    job.refresh_from_db()
    child.refresh_from_db()
    assert job.state == Job.State.RUNNING  # its run ends it, at its next stop point
    assert job.cancel_requested_at is not None
    assert child.state == Job.State.CANCELLED
    # asking again changes nothing
    asked = job.cancel_requested_at
    job_cancel(job=job)
    job.refresh_from_db()
    assert job.cancel_requested_at == asked


@db
def test_an_ended_job_cannot_be_cancelled() -> None:
    for state in (Job.State.SUCCEEDED, Job.State.FAILED, Job.State.CANCELLED):
        job = queued(state=state, finished_at=timezone.now())
        with pytest.raises(Conflict, match="already ended"):
            job_cancel(job=job)
        job.refresh_from_db()
        assert job.state == state


@db
def test_a_cancelled_job_leases_nothing() -> None:
    job = queued()
    Lease.objects.create(job=job, key="sha256:" + "1" * 64)
    assert lease_held("sha256:" + "1" * 64)
    job_cancel(job=job)
    assert not lease_held("sha256:" + "1" * 64)


@db
def test_a_dead_job_asked_to_stop_is_cancelled_not_queued_again(settings: Settings) -> None:
    settings.LAYERHUB_JOB_DEAD_AFTER = 60
    job = running(cancel_requested_at=timezone.now())
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    moved = Job.objects.reap_dead()
    assert [j.pk for j in moved] == [job.pk]
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED


@db
def test_job_run_ends_cancelled_whatever_the_stopped_work_raised() -> None:
    job = running()
    job_run(job, lambda: (_ for _ in ()).throw(JobCancelled("stop")))
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    assert job.error == ""

    # a knock-on error of a thread the cancel stopped is the cancel too, not a failure
    other = running()
    Job.objects.filter(pk=other.pk).update(cancel_requested_at=timezone.now())

    def work() -> None:
        raise InterruptedError("another layer failed")

    job_run(other, work)
    other.refresh_from_db()
    assert other.state == Job.State.CANCELLED


@db
def test_a_cancel_before_the_work_starts_stops_it_there() -> None:
    job = running(cancel_requested_at=timezone.now())
    ran = []
    job_run(job, lambda: ran.append(1))
    job.refresh_from_db()
    assert ran == []
    assert job.state == Job.State.CANCELLED


@db
def test_the_watch_reads_the_row_at_most_once_an_interval() -> None:
    job = running()
    watch = CancelWatch(job)
    assert not watch.poll()
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    assert not watch.poll()  # looked less than a second ago: no query, no news
    assert not watch.requested()
    assert watch.poll(force=True)
    assert watch.requested()
    with pytest.raises(JobCancelled):
        watch.check()


@db
def test_progress_saving_notices_a_cancel() -> None:
    job = running()
    progress = JobProgress(job)
    Job.objects.filter(pk=job.pk).update(cancel_requested_at=timezone.now())
    progress.watch._polled_at = float("-inf")  # as if a second had passed
    progress.update("sha256:" + "a" * 64, "Downloading", 1, 2)
    progress.flush()
    assert progress.watch.requested()


@db
def test_follow_says_cancelled_and_the_command_stops() -> None:
    job = queued()
    job_cancel(job=job)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="was cancelled"):
        follow_to_end(job, out, err, what="pull")
    assert out.getvalue().splitlines()[-1] == "cancelled"


@db
def test_cancelling_a_queued_import_of_an_upload_deletes_the_upload(tmp_path: Path) -> None:
    upload = tmp_path / "upload.tar"
    upload.write_bytes(b"x")
    job = queued(kind=Job.Kind.IMPORT, params={"path": str(upload), "upload": True})
    job_cancel(job=job)
    assert not upload.exists()


# -- the engine's stop points -----------------------------------------------------------------


def _stop_after(calls: int) -> tuple[list[int], object]:
    seen: list[int] = []

    def should_stop() -> bool:
        seen.append(1)
        return len(seen) > calls

    return seen, should_stop


def test_unpack_stops_between_layers_leaving_no_partial_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layers = [
        make_layer({"a": None, "a/one": b"1" * 10_000}),
        make_layer({"b": None, "b/two": b"2" * 10_000}),
    ]
    for layer in layers:
        store.blobs.put_bytes(layer.data, layer.digest)
    descriptors = [Descriptor(layer.media_type, layer.digest, layer.size) for layer in layers]
    diff_ids = [layer.diff_id for layer in layers]
    _, should_stop = _stop_after(1)
    with pytest.raises(Cancelled):
        unpack(store, descriptors, diff_ids, should_stop=should_stop)  # type: ignore[arg-type]
    first, second = chain_ids(diff_ids)
    assert store.snapshots.exists(first)
    assert not store.snapshots.exists(second)
    assert list(store.snapshots.root.iterdir()) == [store.snapshots.outer(first)]
    assert list(store.tmp.iterdir()) == []


def _oci_archive(path: Path) -> Path:
    layers = [make_layer({"x": None, "x/big": bytes(range(256)) * 20_000})]
    layout = write_layout(path.parent / "layout", {"v1": OciImage(layers)})
    with tarfile.open(path, "w") as tar:
        for entry in sorted(layout.rglob("*")):
            tar.add(entry, arcname=str(entry.relative_to(layout)), recursive=False)
    return path


def test_import_stops_at_a_chunk_and_takes_back_what_it_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    archive = _oci_archive(tmp_path / "app.tar")
    seen, should_stop = _stop_after(3)  # the config goes in, the layer stops at a chunk
    with pytest.raises(Cancelled):
        import_archive(archive, store, should_stop=should_stop)  # type: ignore[arg-type]
    assert len(seen) == 4
    assert list(store.blobs.digests()) == []  # the config it had stored is taken back
    assert list(store.tmp.iterdir()) == []


# -- jobs against a real registry -------------------------------------------------------------


@real_db
@pytest.mark.usefixtures("eager")
def test_a_pull_cancelled_mid_download_stops_within_seconds(
    proxy: FaultyProxy,  # noqa: F811
    seed: object,  # noqa: F811
    settings: Settings,
) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    proxy.delay = 3.0  # every blob body waits: the layers are in flight when the cancel comes
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        from django.db import connection

        try:
            image_pull(team=default_team(), reference=f"{proxy.host}/team/app:v1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    layers = {seed.base.digest, seed.app.digest}  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while not layers & set(proxy.blob_gets) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert layers & set(proxy.blob_gets), "the layer downloads never started"
    job = Job.objects.get(kind=Job.Kind.PULL)
    assert job.state == Job.State.RUNNING
    asked = time.monotonic()
    job_cancel(job=job)
    assert done.wait(30)
    thread.join()
    assert not errors
    assert time.monotonic() - asked < 10
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED, job.error
    assert tmp_entries() == []
    assert not Image.objects.exists()
    assert not job.children.exists()  # no unpack queued
    store = get_store()
    assert not any(store.blobs.has(digest) for digest in layers)
    assert not lease_held(seed.base.digest)  # type: ignore[attr-defined]


@real_db
@pytest.mark.usefixtures("eager")
def test_an_unpack_cancelled_between_layers_leaves_no_partial_snapshot(
    registry: Registry,  # noqa: F811
    seed: object,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pull = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    pull.refresh_from_db()
    assert pull.state == Job.State.SUCCEEDED, pull.error
    assert pull.image is not None
    base, app = chain_ids([seed.base.diff_id, seed.app.diff_id])  # type: ignore[attr-defined]
    store = get_store()
    for chain in (base, app):  # the snapshots lost: an unpack job makes them again
        store.snapshots.remove(chain)
    Layer.objects.update(unpacked_at=None)
    real_update = JobProgress.update

    def update(self: JobProgress, digest: str, status: str, current: int, total: int) -> None:
        real_update(self, digest, status, current, total)
        if self.job.kind == Job.Kind.UNPACK and status == "Pull complete":
            job_cancel(job=Job.objects.get(pk=self.job.pk))  # once its first layer is made

    monkeypatch.setattr(JobProgress, "update", update)
    monkeypatch.setattr(pipeline, "default_unpacks", lambda: 1)  # one layer after the other
    unpack_job = image_unpack_retry(image=pull.image)
    unpack_job.refresh_from_db()
    assert unpack_job.state == Job.State.CANCELLED, unpack_job.error
    made = store.snapshots.chain_ids()
    assert len(made) == 1  # the first layer (the largest goes first), and no partial second
    assert tmp_entries() == []
    assert [row.chain_id for row in Layer.objects.exclude(unpacked_at=None)] == made
    statuses = {line["digest"]: line["status"] for line in unpack_job.progress}
    assert sorted(statuses.values()) == ["Pull complete", "Waiting"]


@real_db
@pytest.mark.usefixtures("eager")
def test_an_export_cancelled_mid_archive_leaves_no_file(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pull = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    pull.refresh_from_db()
    assert pull.state == Job.State.SUCCEEDED, pull.error
    real_write = write_docker_archive
    chunks: list[int] = []

    def write(
        out: BinaryIO, images: Sequence[ExportImage], store: Store, *, should_stop: StopFn
    ) -> None:
        watch = cast(Callable[..., bool], should_stop)  # the job's CancelWatch.poll

        def stop() -> bool:
            chunks.append(1)
            if len(chunks) == 3:  # a few chunks in: someone presses Cancel
                Job.objects.filter(kind=Job.Kind.EXPORT).update(cancel_requested_at=timezone.now())
                return watch(force=True)
            return watch()

        real_write(out, images, store, should_stop=stop)

    monkeypatch.setattr(transfer, "write_docker_archive", write)
    target = tmp_path / "app.tar"
    job = transfer.image_save(images=[f"{registry.host}/team/app:v1"], path=str(target))
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED, job.error
    assert len(chunks) == 3
    assert list(tmp_path.iterdir()) == []  # neither the archive nor its partial file
    assert tmp_entries() == []


@db
def test_a_redelivered_job_whose_worker_died_while_stopping_is_cancelled(
    settings: Settings,
) -> None:
    settings.LAYERHUB_JOB_DEAD_AFTER = 60
    job = running(cancel_requested_at=timezone.now())
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert not job.claim()  # the message came again: it is not run a second time
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    assert job.attempts == 1


@real_db
@pytest.mark.usefixtures("eager")
def test_a_push_stops_at_a_chunk_and_sends_no_manifest(registry: Registry) -> None:  # noqa: F811
    pull = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    pull.refresh_from_db()
    assert pull.image is not None, pull.error
    store = get_store()
    data = store.blobs.read_bytes(pull.image.manifest_digest)
    manifest = parse_manifest(data)
    assert isinstance(manifest, ImageManifest)
    seen, should_stop = _stop_after(3)
    client = RegistryClient(registry.host, backoff=0.01)
    try:
        with pytest.raises(Cancelled):
            push_image(
                client,
                "team/cancelled",
                "1",
                data,
                manifest.media_type,
                [manifest.config, *manifest.layers],
                store,
                chunk_size=50_000,
                concurrency=1,
                should_stop=should_stop,  # type: ignore[arg-type]
            )
        assert len(seen) == 4
        with pytest.raises(ManifestUnknown):
            client.get_manifest("team/cancelled", "1")
    finally:
        client.close()


@real_db
def test_a_real_worker_stops_a_cancelled_pull_within_seconds(
    proxy: FaultyProxy,  # noqa: F811
    seed: Seed,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    worker: subprocess.Popen[bytes],  # noqa: F811
) -> None:
    """The worker's own heartbeat thread notices the cancel (no eager shortcut), and the
    CLI following the job prints "cancelled"."""
    proxy.delay = 3.0
    follower = subprocess.Popen(
        [sys.executable, "manage.py", "pull", f"{proxy.host}/team/app:v1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: Job.objects.filter(kind=Job.Kind.PULL).exists(), 60, "the pull job")
        job = Job.objects.get(kind=Job.Kind.PULL)
        layers = {seed.base.digest, seed.app.digest}
        wait_for(lambda: bool(layers & set(proxy.blob_gets)), 60, "the layer downloads")
        job.refresh_from_db()
        assert job.state == Job.State.RUNNING
        asked = time.monotonic()
        job_cancel(job=job)

        def ended() -> bool:
            job.refresh_from_db()
            return job.done

        wait_for(ended, 30, "the pull to stop")
        assert time.monotonic() - asked < 10
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert job.state == Job.State.CANCELLED, job.error
    assert out.splitlines()[-1] == "cancelled"
    assert follower.returncode != 0
    assert "was cancelled" in err
    assert tmp_entries() == []
    assert not Image.objects.exists()
    assert not any(get_store().blobs.has(digest) for digest in layers)
