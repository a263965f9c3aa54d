"""Garbage collection's rules on rows alone: the lease barrier, the settings, the report kept
on a job row, the gc job and the schedule that queues it."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.utils import timezone
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.env import env_duration
from layerhub.images.gc import GCReport, store_gc
from layerhub.images.gc import collect as gc_collect
from layerhub.images.gc.plan import Disk, Plan, make_plan
from layerhub.images.leases import job_lease, job_lease_copy
from layerhub.images.models import Image, ImageLayer, Layer
from layerhub.images.services import pull as pull_services
from layerhub.images.services import transfer
from layerhub.images.services.gc import store_gc_report, store_gc_run, store_gc_scheduled
from layerhub.images.sizes import DeletePlan, image_delete_plan
from layerhub.jobs.models import Job, Lease
from tests.test_settings import load_settings
from workers import app


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(name: str, parent: Layer | None = None) -> Layer:
    return Layer.objects.create(
        chain_id=digest(f"chain {name}"),
        parent=parent,
        digest=digest(f"blob {name}"),
        diff_id=digest(f"diff {name}"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=10,
    )


# -- the lease barrier --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_lease_written_while_gc_judges_waits_until_its_deletes_are_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a layer row no image uses (what rmi leaves for a lease): garbage, as judged now
    doomed = layer("left by rmi")
    puller = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    judged = threading.Event()
    go_on = threading.Event()
    events: list[str] = []
    real_plan = make_plan

    def judge_then_wait(disk: Disk, now: datetime) -> Plan:
        plan = real_plan(disk, now)
        judged.set()
        go_on.wait(30)
        return plan

    monkeypatch.setattr(gc_collect, "make_plan", judge_then_wait)

    def collect() -> None:
        try:
            store_gc()
        finally:
            connections.close_all()

    def lease() -> None:
        try:
            judged.wait(30)
            # a pull about to record an image on that layer row leases it now
            job_lease(job=puller, keys=[doomed.chain_id])
            events.append("leased")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=collect), threading.Thread(target=lease)]
    for thread in threads:
        thread.start()
    assert judged.wait(30)
    time.sleep(1.0)  # time enough for a lease that did not wait to be written
    events.append("deletes committed")
    go_on.set()
    for thread in threads:
        thread.join(30)
    # the lease waited for the collection's transaction: the pull then finds the row gone
    # (and makes it again), instead of recording an image on a row being deleted
    assert events == ["deletes committed", "leased"]
    assert not Layer.objects.filter(pk=doomed.pk).exists()
    assert Lease.objects.filter(job=puller, key=doomed.chain_id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_lease_written_while_rmi_judges_waits_until_its_deletes_are_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    only = layer("only")
    image = Image.objects.create(
        manifest_digest=digest("rmi manifest"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest("rmi config"),
        config={},
    )
    ImageLayer.objects.create(image=image, layer=only, position=0)
    puller = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    judged = threading.Event()
    go_on = threading.Event()
    events: list[str] = []
    real_plan = image_delete_plan

    def judge_then_wait(found: Image) -> DeletePlan:
        plan = real_plan(found)
        judged.set()
        go_on.wait(30)
        return plan

    monkeypatch.setattr(transfer, "image_delete_plan", judge_then_wait)

    def remove() -> None:
        try:
            transfer.image_remove(image=image.config_digest)
        finally:
            connections.close_all()

    def lease() -> None:
        try:
            judged.wait(30)
            job_lease(job=puller, keys=[only.chain_id])
            events.append("leased")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=remove), threading.Thread(target=lease)]
    for thread in threads:
        thread.start()
    assert judged.wait(30)
    time.sleep(1.0)
    events.append("deletes committed")
    go_on.set()
    for thread in threads:
        thread.join(30)
    assert events == ["deletes committed", "leased"]
    assert not Layer.objects.filter(pk=only.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_what_a_live_lease_holds_and_what_stands_on_it_stay() -> None:
    base = layer("base")
    middle = layer("middle", base)
    top = layer("top", middle)
    image = Image.objects.create(
        manifest_digest=digest("manifest"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest("config"),
        config={},
    )
    ImageLayer.objects.create(image=image, layer=base, position=0)
    holder = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    job_lease(job=holder, keys=[middle.chain_id])
    report = store_gc()
    # the leased layer and what is below it stay; the row above it goes
    assert [(i.what, i.key) for i in report.items] == [("snapshot", top.chain_id)]
    assert set(Layer.objects.values_list("pk", flat=True)) == {base.pk, middle.pk}
    holder.finish()
    report = store_gc()
    assert [(i.what, i.key) for i in report.items] == [("snapshot", middle.chain_id)]
    assert list(Layer.objects.values_list("pk", flat=True)) == [base.pk]


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("45s", timedelta(seconds=45)),
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        (" 30d ", timedelta(days=30)),
        ("1.5h", timedelta(minutes=90)),
        ("2D", timedelta(days=2)),
    ],
)
def test_durations_take_a_unit(raw: str, expected: timedelta) -> None:
    assert env_duration("X", None, environ={"X": raw}) == expected


@pytest.mark.parametrize("raw", ["30", "", "d", "-1d", "1w", "1e3s", "inf", "1 day", "٣d"])
def test_a_duration_without_its_unit_or_with_another_is_refused(raw: str) -> None:
    with pytest.raises(ImproperlyConfigured, match="X=") as info:
        env_duration("X", None, environ={"X": raw})
    assert repr(raw) in str(info.value)


def test_off_only_where_a_period_may_be_off() -> None:
    assert env_duration("X", timedelta(1), allow_off=True, environ={"X": "off"}) is None
    assert env_duration("X", timedelta(1), allow_off=True, environ={"X": "Never"}) is None
    with pytest.raises(ImproperlyConfigured, match="cannot be off"):
        env_duration("X", timedelta(1), environ={"X": "off"})
    with pytest.raises(ImproperlyConfigured, match="between 1m and"):
        env_duration("X", None, minimum=timedelta(minutes=1), environ={"X": "30s"})


def test_the_gc_settings_and_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LAYERHUB_GC_GRACE",
        "LAYERHUB_GC_KEEP_UNTAGGED",
        "LAYERHUB_GC_KEEP_JOBS",
        "LAYERHUB_GC_KEEP_EXPORTS",
        "LAYERHUB_GC_KEEP_MULTIPART",
        "LAYERHUB_GC_EVERY",
    ):
        monkeypatch.delenv(name, raising=False)
    defaults = load_settings(monkeypatch)
    assert defaults["LAYERHUB_GC_GRACE"] == timedelta(hours=1)
    assert defaults["LAYERHUB_GC_KEEP_UNTAGGED"] is None
    assert defaults["LAYERHUB_GC_KEEP_JOBS"] == timedelta(days=30)
    assert defaults["LAYERHUB_GC_KEEP_EXPORTS"] == timedelta(days=7)
    assert defaults["LAYERHUB_GC_KEEP_MULTIPART"] == timedelta(days=1)
    assert defaults["CELERY_BEAT_SCHEDULE"] == {
        "layerhub-gc": {"task": "layerhub.store_gc_scheduled", "schedule": 86400.0}
    }
    chosen = load_settings(
        monkeypatch,
        LAYERHUB_GC_GRACE="10m",
        LAYERHUB_GC_KEEP_UNTAGGED="14d",
        LAYERHUB_GC_KEEP_JOBS="off",
        LAYERHUB_GC_KEEP_MULTIPART="6h",
        LAYERHUB_GC_EVERY="off",
    )
    assert chosen["LAYERHUB_GC_GRACE"] == timedelta(minutes=10)
    assert chosen["LAYERHUB_GC_KEEP_UNTAGGED"] == timedelta(days=14)
    assert chosen["LAYERHUB_GC_KEEP_JOBS"] is None
    assert chosen["LAYERHUB_GC_KEEP_MULTIPART"] == timedelta(hours=6)
    assert chosen["CELERY_BEAT_SCHEDULE"] == {}
    for name, bad in (
        ("LAYERHUB_GC_GRACE", "off"),
        ("LAYERHUB_GC_KEEP_JOBS", "30"),
        ("LAYERHUB_GC_EVERY", "5s"),
        ("LAYERHUB_GC_KEEP_MULTIPART", "10m"),  # uploads that may still be under way
    ):
        with pytest.raises(ImproperlyConfigured, match=name):
            load_settings(monkeypatch, **{name: bad})
        monkeypatch.delenv(name)


def test_the_beat_schedule_names_a_registered_task() -> None:
    app.loader.import_default_modules()
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in app.tasks


# -- the job ------------------------------------------------------------------------------------


@pytest.fixture
def eager(settings: Settings) -> Iterator[None]:
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")
def test_the_schedule_queues_one_collection_at_a_time(settings: Settings) -> None:
    orphan = get_store().blobs.put_bytes(b"left by a failed pull")
    job = store_gc_scheduled()
    assert job is not None
    job.refresh_from_db()
    assert (job.kind, job.state) == (Job.Kind.GC, Job.State.SUCCEEDED)
    report = store_gc_report(job)
    assert report is not None
    assert not report.dry_run
    assert [(i.what, i.key) for i in report.items] == [("blob", orphan.digest)]
    assert not get_store().blobs.has(orphan.digest)
    # one queued (or running) already: the schedule queues no second
    Job.objects.create(kind=Job.Kind.GC)
    assert store_gc_scheduled() is None
    assert Job.objects.filter(kind=Job.Kind.GC).count() == 2


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")  # no heartbeat thread: the test answers every poll
def test_a_cancelled_collection_stops_between_items_and_keeps_its_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = get_store()
    orphans = [store.blobs.put_bytes(f"orphan {n}".encode()).digest for n in range(3)]
    job = Job.objects.create(kind=Job.Kind.GC, params={"dry_run": False})
    # the run's first look, then one before each item: the second item is asked to stop
    asked = iter([False, False, True])

    def stop_after_one(self: Any, *, force: bool = False) -> bool:
        return next(asked, True)

    monkeypatch.setattr("layerhub.jobs.services.CancelWatch.poll", stop_after_one)
    store_gc_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    report = store_gc_report(job)
    assert report is not None
    assert report.stopped
    assert [i.key for i in report.items] == sorted(orphans)[:1]
    assert [store.blobs.has(d) for d in sorted(orphans)] == [False, True, True]


def test_a_report_cut_for_its_job_row_keeps_the_exact_count_and_bytes() -> None:
    from layerhub.images.gc import Garbage
    from layerhub.images.gc.report import MAX_STORED_ITEMS

    items = [Garbage("blob", f"sha256:{n:064x}", 10, "no image names it") for n in range(600)]
    report = GCReport(dry_run=True, items=items, held=["blob x: leased"])
    stored = GCReport.from_json(report.to_json())
    assert len(stored.items) == MAX_STORED_ITEMS
    assert (stored.count, stored.freed_bytes) == (600, 6000)
    assert stored.total_line() == "Total reclaimable space: 6kB (6000 bytes)"
    assert stored.held == ["blob x: leased"]


@pytest.mark.django_db
def test_untagged_images_are_kept_unless_a_period_is_set(settings: Settings) -> None:
    image = Image.objects.create(
        manifest_digest=digest("m"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest("c"),
        config={},
        added_at=timezone.now() - timedelta(days=3650),
    )
    settings.LAYERHUB_GC_KEEP_UNTAGGED = None
    assert store_gc(dry_run=True).items == []
    settings.LAYERHUB_GC_KEEP_UNTAGGED = timedelta(days=30)
    assert [(i.what, i.key) for i in store_gc(dry_run=True).items] == [
        ("image", image.config_digest)
    ]
    # a job that is about to use it (an unpack, a push) keeps it
    Job.objects.create(kind=Job.Kind.PUSH, state=Job.State.QUEUED, image=image)
    assert store_gc(dry_run=True).items == []


@pytest.mark.django_db(transaction=True)
def test_old_job_rows_go_in_batches_with_the_jobs_they_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gc_collect, "JOB_DELETE_BATCH", 1)
    long_ago = timezone.now() - timedelta(days=60)
    parent = Job.objects.create(
        kind=Job.Kind.PULL, state=Job.State.FAILED, created_at=long_ago, finished_at=long_ago
    )
    child = Job.objects.create(
        kind=Job.Kind.UNPACK,
        state=Job.State.CANCELLED,
        parent=parent,
        created_at=long_ago,
        finished_at=long_ago,
    )
    recent = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.SUCCEEDED)
    dry = store_gc(dry_run=True)
    report = store_gc()
    expected = [("job", str(parent.pk)), ("job", str(child.pk))]
    assert [(i.what, i.key) for i in dry.items] == expected
    assert [(i.what, i.key) for i in report.items] == expected
    assert list(Job.objects.values_list("pk", flat=True)) == [recent.pk]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")
def test_rmi_of_an_image_whose_unpack_is_being_queued_waits_instead_of_deadlocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = Image.objects.create(
        manifest_digest=digest("queued manifest"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest("queued config"),
        config={},
    )
    pull = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING, image=image)
    job_lease(job=pull, keys=[image.manifest_digest])
    queued = threading.Event()
    go_on = threading.Event()
    errors: list[BaseException] = []
    real_copy = job_lease_copy

    def copy_later(*, source: Job, target: Job) -> None:
        queued.set()  # the unpack's row is written (it names the image): rmi comes now
        go_on.wait(30)
        real_copy(source=source, target=target)

    monkeypatch.setattr(pull_services, "job_lease_copy", copy_later)

    def queue_unpack() -> None:
        try:
            pull_services._queue_unpack(pull, image)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def remove() -> None:
        try:
            queued.wait(30)
            transfer.image_remove(image=image.config_digest)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=queue_unpack), threading.Thread(target=remove)]
    for thread in threads:
        thread.start()
    assert queued.wait(30)
    time.sleep(1.5)  # past PostgreSQL's deadlock_timeout: a circle would be broken by now
    go_on.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert not Image.objects.filter(pk=image.pk).exists()  # rmi went second, and went
