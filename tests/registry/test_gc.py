"""Garbage collection against a store filled by real pulls from the test registry: what goes
and what stays, the dry run's list and figure against what the run then deletes and frees
(measured on disk), leases, crash safety, symlinks and mounts, and the command."""

from __future__ import annotations

import io
import os
import random
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone
from pytest_django import Settings

from layerhub.containers.services import container_create
from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine import archive as archive_module
from layerhub.engine import fsutil
from layerhub.engine.digest import chain_ids
from layerhub.images.gc import GCReport, store_gc
from layerhub.images.gc import collect as gc_collect
from layerhub.images.leases import job_lease
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Blob, Image, Layer, Tag
from layerhub.images.services import image_import, image_pull
from layerhub.images.services.transfer import image_remove
from layerhub.images.verify import store_verify
from layerhub.jobs.models import Job, Lease
from tests.registry.conftest import Seed
from tests.support.blobs import local_blobs
from tests.support.oci import Image as OciImage
from tests.support.oci import layer_tar, make_layer, write_layout
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]

HOUR = 3600.0
DAY = 86400.0


@pytest.fixture(autouse=True)
def gc_settings(settings: Settings, tmp_path: Path) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    settings.LAYERHUB_GC_GRACE = timedelta(hours=1)
    settings.LAYERHUB_GC_KEEP_UNTAGGED = timedelta(days=30)
    settings.LAYERHUB_GC_KEEP_JOBS = timedelta(days=30)
    settings.LAYERHUB_GC_KEEP_EXPORTS = timedelta(days=7)
    settings.LAYERHUB_EXPORT_DIR = tmp_path / "exports"
    settings.LAYERHUB_UPLOAD_DIR = tmp_path / "uploads"
    (tmp_path / "exports").mkdir()
    (tmp_path / "uploads").mkdir()


def pulled(reference: str) -> Image:
    job = image_pull(team=default_team(), reference=reference)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert not job.children.exists()  # the pull unpacked every layer itself
    assert job.image is not None
    return job.image


def own_image(registry: Registry, seed: Seed, tmp_path: Path, name: str) -> str:
    """An image of the base and a layer of its own, pushed to the registry: its reference by
    digest (pulled so, it is untagged)."""
    layer = make_layer({"gc": None, f"gc/{name}": random.Random(name).randbytes(20_000)})
    image = OciImage([seed.base, layer])
    registry.push_layout(write_layout(tmp_path / f"layout-{name}", {name: image}), name, "gc/own")
    return f"{registry.host}/gc/own@{image.manifest.digest}"


def aged(path: Path, seconds: float) -> Path:
    """Make ``path`` look last modified ``seconds`` ago (the link itself, not its target)."""
    moment = time.time() - seconds
    os.utime(path, (moment, moment), follow_symlinks=False)
    return path


def size_of(path: Path) -> int:
    """Bytes of regular files at or under ``path`` (a hardlinked file once), never following
    a link: what a removal of ``path`` frees."""
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return fsutil.tree_usage(path)[0]
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def disk_bytes(settings: Settings) -> int:
    """What the store and the export and upload folders hold, measured on disk."""
    store = get_store()
    usage = store.usage()
    total = usage.blob_bytes + usage.snapshot_bytes
    for folder in (
        store.containers,
        store.tmp,
        Path(settings.LAYERHUB_EXPORT_DIR),
        Path(settings.LAYERHUB_UPLOAD_DIR),
    ):
        total += sum(size_of(entry) for entry in folder.iterdir())
    return total


def running_job(kind: str = Job.Kind.PULL, **fields: object) -> Job:
    """A job that has not ended (its leases live), made as a row alone: no worker runs it."""
    return Job.objects.create(kind=kind, state=Job.State.RUNNING, **fields)


def ended_job(days_ago: float, kind: str = Job.Kind.PULL, **fields: object) -> Job:
    moment = timezone.now() - timedelta(days=days_ago)
    return Job.objects.create(
        kind=kind,
        state=Job.State.SUCCEEDED,
        created_at=moment,
        finished_at=moment,
        **fields,
    )


def image_keys(image: Image) -> list[str]:
    layers = list(image.image_layers.order_by("position").select_related("layer"))
    return [
        image.manifest_digest,
        image.config_digest,
        *(row.layer.digest for row in layers),
        *(row.layer.chain_id for row in layers),
    ]


def complete(image: Image) -> None:
    """Every blob and snapshot the image names is there, with its rows."""
    store = get_store()
    for digest in (image.manifest_digest, image.config_digest):
        assert store.blobs.has(digest), digest
        assert Blob.objects.filter(digest=digest).exists(), digest
    for row in image.image_layers.select_related("layer"):
        assert store.blobs.has(row.layer.digest)
        assert Blob.objects.filter(digest=row.layer.digest).exists()
        assert row.layer.unpacked_at is not None
        assert store.snapshots.exists(row.layer.chain_id)


def keys(report: GCReport) -> list[tuple[str, str]]:
    return [(item.what, item.key) for item in report.items]


def test_the_dry_run_lists_exactly_what_the_run_deletes_and_frees_those_bytes(
    registry: Registry, seed: Seed, settings: Settings, tmp_path: Path
) -> None:
    store = get_store()
    app = pulled(f"{registry.host}/team/app:v1")
    other = pulled(f"{registry.host}/team/other:other")
    Image.objects.filter(pk=other.pk).update(added_at=timezone.now() - timedelta(days=90))
    base_chain, app_chain = chain_ids([seed.base.diff_id, seed.app.diff_id])
    app_layer_bytes = Layer.objects.get(chain_id=app_chain).unpacked_size

    # rmi while a pull has leased app's blobs and layers: they stay, and its layer row too
    holder = running_job()
    job_lease(job=holder, keys=image_keys(app))
    image_remove(image=f"{registry.host}/team/app:v1")
    assert store.snapshots.exists(app_chain)
    assert store.blobs.has(seed.app.digest)
    assert Layer.objects.filter(chain_id=app_chain).exists()
    holder.finish()  # the lease ends with its job: what it held is garbage now

    # untagged images: an old one goes, a young one and an old one a container uses stay
    gone = pulled(own_image(registry, seed, tmp_path, "gone"))
    young = pulled(own_image(registry, seed, tmp_path, "young"))
    used = pulled(own_image(registry, seed, tmp_path, "used"))
    assert not Tag.objects.filter(image__in=[gone, young, used]).exists()
    old = timezone.now() - timedelta(days=31)
    Image.objects.filter(pk__in=[gone.pk, used.pk]).update(added_at=old)
    container_create(team=default_team(), image=used.config_digest, name="keeps-its-image")
    gone_layer = gone.image_layers.get(position=1).layer

    # a failed pull's blob, a snapshot no row names, a container layer no container has
    orphan_blob = store.blobs.put_bytes(b"a failed pull left me").digest
    orphan_chain = "sha256:" + "ab" * 32
    store.snapshots.unpack(orphan_chain, io.BytesIO(layer_tar({"o": b"x" * 5_000})))
    old_container = store.containers / ("c0" * 32)
    (old_container / "upper").mkdir(parents=True)
    (old_container / "upper" / "f").write_bytes(b"y" * 7_000)
    aged(old_container, 2 * HOUR)
    young_container = store.containers / ("c1" * 32)
    (young_container / "upper").mkdir(parents=True)

    # tmp/: an old leftover goes; one a live process holds and a young one stay
    leftover = store.tmp / "blob-leftover"
    leftover.write_bytes(b"z" * 3_000)
    aged(leftover, 2 * HOUR)
    held = fsutil.TempEntry(store.tmp, "blob-", directory=False)
    os.write(held.fd, b"in flight")
    aged(held.path, 2 * HOUR)
    fresh = store.tmp / "unpack-fresh"
    fresh.mkdir()

    # saved archives and uploads
    exports = Path(settings.LAYERHUB_EXPORT_DIR)
    old_archive = exports / "old.tar"
    old_archive.write_bytes(b"a" * 11_000)
    aged(old_archive, 8 * DAY)
    new_archive = exports / "new.tar"
    new_archive.write_bytes(b"b" * 100)
    half = exports / ".dead.tar.99.partial"
    half.write_bytes(b"c" * 500)
    aged(half, 2 * HOUR)
    exporting = exports / "exporting.tar"
    exporting.write_bytes(b"d" * 100)
    aged(exporting, 8 * DAY)
    running_job(Job.Kind.EXPORT, params={"path": str(exporting)})
    uploads = Path(settings.LAYERHUB_UPLOAD_DIR)
    stale = uploads / "stale.tar"
    stale.write_bytes(b"e" * 1_300)
    aged(stale, 2 * HOUR)
    waiting = uploads / "waiting.tar"
    waiting.write_bytes(b"f" * 100)
    aged(waiting, 2 * HOUR)
    Job.objects.create(
        kind=Job.Kind.IMPORT, params={"path": str(waiting), "upload": True}
    )  # queued

    # job rows: old ended ones go (with their leases); recent ones, live ones and an old one
    # whose child is recent stay
    old_job = ended_job(40)
    Lease.objects.create(job=old_job, key=seed.base.digest)
    old_parent = ended_job(40)
    old_child = ended_job(35, parent=old_parent, kind=Job.Kind.UNPACK)
    kept_parent = ended_job(40)
    ended_job(1, parent=kept_parent, kind=Job.Kind.UNPACK)
    ended_job(2)

    rows_before = (Image.objects.count(), Layer.objects.count(), Blob.objects.count())
    jobs_before = Job.objects.count()
    before = disk_bytes(settings)
    dry = store_gc(dry_run=True)
    assert dry.dry_run
    # the dry run changed nothing
    assert disk_bytes(settings) == before
    assert (Image.objects.count(), Layer.objects.count(), Blob.objects.count()) == rows_before
    assert Job.objects.count() == jobs_before

    app_blobs = {seed.app.digest, seed.app_image.config.digest, seed.app_image.manifest.digest}
    gone_blobs = {gone.manifest_digest, gone.config_digest, gone_layer.digest}
    expected = {
        ("image", gone.config_digest),
        ("snapshot", app_chain),
        ("snapshot", gone_layer.chain_id),
        ("snapshot", orphan_chain),
        *(("blob", d) for d in app_blobs | gone_blobs | {orphan_blob}),
        ("container", old_container.name),
        ("tmp", "tmp/blob-leftover"),
        ("export", str(old_archive)),
        ("export", str(half)),
        ("upload", str(stale)),
        *(("job", str(job.pk)) for job in (old_job, old_parent, old_child)),
    }
    assert set(keys(dry)) == expected
    assert len(dry.items) == len(expected)
    assert f"tmp/{held.path.name}: held by a live process" in dry.held
    sizes = {(item.what, item.key): item.size for item in dry.items}
    # recorded sizes where rows record them, as the sizes pages compute them
    assert sizes[("snapshot", app_chain)] == app_layer_bytes
    assert sizes[("blob", seed.app.digest)] == seed.app.size
    assert sizes[("snapshot", gone_layer.chain_id)] == gone_layer.unpacked_size
    assert sizes[("snapshot", orphan_chain)] == 5_000
    assert sizes[("container", old_container.name)] == 7_000
    assert sizes[("tmp", "tmp/blob-leftover")] == 3_000
    assert sizes[("export", str(old_archive))] == 11_000
    assert sizes[("upload", str(stale))] == 1_300

    report = store_gc()
    after = disk_bytes(settings)
    assert not report.dry_run
    assert keys(report) == keys(dry)  # the same items, in the same order
    assert report.freed_bytes == dry.freed_bytes == before - after
    assert dry.freed_bytes > 0

    # gone: the untagged image, the leftovers; their rows with them
    assert not Image.objects.filter(pk=gone.pk).exists()
    assert not Layer.objects.filter(chain_id__in=[app_chain, gone_layer.chain_id]).exists()
    assert not Blob.objects.filter(digest__in=app_blobs | gone_blobs).exists()
    assert not any(store.blobs.has(d) for d in app_blobs | gone_blobs | {orphan_blob})
    assert not Job.objects.filter(pk__in=[old_job.pk, old_parent.pk, old_child.pk]).exists()
    assert not Lease.objects.filter(job_id=old_job.pk).exists()
    # kept: every image that stays, whole; the live, the young and the held
    for image in (other, young, used):
        complete(Image.objects.get(pk=image.pk))
    assert store.snapshots.exists(base_chain)
    assert young_container.exists()
    assert held.path.exists()
    assert fresh.exists()
    assert new_archive.exists()
    assert exporting.exists()
    assert waiting.exists()
    assert Job.objects.filter(pk=kept_parent.pk).exists()

    # once the young and the held are gone, the store and the catalog agree
    held.close(remove=True)
    fresh.rmdir()
    fsutil.remove_path(young_container)
    verified = store_verify()
    assert verified.findings == [], [f.line() for f in verified.findings]
    again = store_gc(dry_run=True)
    assert again.items == [] or {i.what for i in again.items} <= {"export", "upload"}
    assert again.freed_bytes == 0


def test_what_a_running_job_leased_stays_until_it_ends(registry: Registry, seed: Seed) -> None:
    store = get_store()
    app = pulled(f"{registry.host}/team/app:v1")
    keys_held = image_keys(app)
    holder = running_job()
    job_lease(job=holder, keys=keys_held)
    image_remove(image=f"{registry.host}/team/app:v1")
    report = store_gc()
    assert report.items == []
    # the blobs no row names any more are held by the lease; the layers' rows stay, leased
    held = " ".join(report.held)
    assert app.manifest_digest in held
    assert app.config_digest in held
    assert all(store.blobs.has(key) or store.snapshots.exists(key) for key in keys_held)
    holder.finish(error="it failed")  # a failed pull: what it fetched is garbage now
    report = store_gc()
    assert {item.key for item in report.items} == set(keys_held)
    assert list(store.blobs.digests()) == []
    assert store.snapshots.chain_ids() == []
    assert not Layer.objects.exists()
    assert not Blob.objects.exists()
    assert store_verify().ok


def test_a_crash_after_the_rows_leaves_only_orphans_the_next_run_frees(
    registry: Registry, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = get_store()
    app = pulled(f"{registry.host}/team/app:v1")
    holder = running_job()
    job_lease(job=holder, keys=image_keys(app))
    image_remove(image=f"{registry.host}/team/app:v1")
    holder.finish()
    planned = store_gc(dry_run=True)

    class Crash(Exception):
        pass

    def crash(**kwargs: object) -> None:
        raise Crash("the worker died here")

    # the rows are committed, then the process dies before any file goes
    monkeypatch.setattr(gc_collect, "plan_files_delete", crash)
    with pytest.raises(Crash):
        store_gc()
    assert not Layer.objects.exists()
    found = store_verify()
    # nothing a row names is missing: only files no row names, for the next run
    assert {f.problem for f in found.findings} == {"orphan"}
    monkeypatch.undo()
    report = store_gc()
    assert report.freed_bytes == planned.freed_bytes
    assert store_verify().ok
    assert list(store.blobs.digests()) == []


def test_a_crash_while_judging_rows_deletes_nothing(
    registry: Registry, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = pulled(f"{registry.host}/team/app:v1")
    holder = running_job()
    job_lease(job=holder, keys=image_keys(app))
    image_remove(image=f"{registry.host}/team/app:v1")
    holder.finish()
    rows = Layer.objects.count()

    def crash(**kwargs: object) -> list[str]:
        raise RuntimeError("the worker died here")

    monkeypatch.setattr(gc_collect, "images_delete_rows", crash)
    with pytest.raises(RuntimeError):
        store_gc()
    assert Layer.objects.count() == rows
    assert store_verify().ok  # the layer row and its files are all still there


@pytest.mark.local_blobs
def test_links_are_removed_never_followed(
    registry: Registry, seed: Seed, settings: Settings, tmp_path: Path
) -> None:
    store = get_store()
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_bytes(b"keep me")
    # a link where a blob would be is not a blob: left alone
    stray = local_blobs(store).root / ("ee" * 32)
    stray.symlink_to(precious)
    # a snapshot no row names holding a link to a directory outside
    chain = "sha256:" + "cd" * 32
    store.snapshots.unpack(chain, io.BytesIO(layer_tar({"etc": None})))
    (store.snapshots.path(chain) / "escape").symlink_to(outside, target_is_directory=True)
    # links in tmp/ and in the export folder, old enough to go
    aged(_link(store.tmp / "blob-link", outside), 2 * HOUR)
    aged(_link(Path(settings.LAYERHUB_EXPORT_DIR) / "old.tar", precious), 8 * DAY)
    report = store_gc()
    assert set(keys(report)) == {
        ("snapshot", chain),
        ("tmp", "tmp/blob-link"),
        ("export", str(Path(settings.LAYERHUB_EXPORT_DIR) / "old.tar")),
    }
    assert precious.read_bytes() == b"keep me"
    assert sorted(os.listdir(outside)) == ["precious"]
    assert stray.is_symlink()


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    made: list[Path] = []
    yield made
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_mount_inside_an_orphan_is_never_emptied_through(
    registry: Registry, seed: Seed, tmp_path: Path, mounts: list[Path]
) -> None:
    store = get_store()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    orphan = store.containers / ("ab" * 32)
    (orphan / "upper" / "mnt").mkdir(parents=True)
    (orphan / "upper" / "file").write_bytes(b"x" * 100)
    subprocess.run(
        ["mount", "--bind", str(outside), str(orphan / "upper" / "mnt")],
        check=True,
        capture_output=True,
    )
    aged(orphan, 2 * HOUR)
    report = store_gc()
    # it was moved aside into tmp/, where a sweep unmounts first; the mounted tree is whole
    assert (outside / "precious").read_bytes() == b"keep me"
    assert any(orphan.name in left for left in report.left)
    assert ("container", orphan.name) not in keys(report)
    moved = [p for p in store.tmp.iterdir() if p.name.startswith("gc-")]
    assert len(moved) == 1
    mounts.append(moved[0] / "container" / "upper" / "mnt")
    swept = store.sweep()
    assert swept.unmounted
    assert not list(store.tmp.iterdir())
    assert (outside / "precious").read_bytes() == b"keep me"


def test_the_command_prints_each_item_and_the_total(
    registry: Registry, seed: Seed, capsys: pytest.CaptureFixture[str]
) -> None:
    store = get_store()
    pulled(f"{registry.host}/team/app:v1")
    orphan = store.blobs.put_bytes(b"x" * 1234)
    out = io.StringIO()
    call_command("gc", "--dry-run", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines == [
        f"Would delete blob {orphan.digest} (1234 bytes): no row records it (a failed pull's "
        "or import's)",
        "",
        f"Total reclaimable space: {human_size(1234)} (1234 bytes)",
    ]
    assert store.blobs.has(orphan.digest)
    out = io.StringIO()
    call_command("gc", stdout=out)
    assert out.getvalue().splitlines()[0].startswith(f"Deleted blob {orphan.digest} (1234 bytes)")
    assert out.getvalue().splitlines()[-1] == "Total reclaimed space: 1.23kB (1234 bytes)"
    out = io.StringIO()
    call_command("gc", "-n", stdout=out)
    assert out.getvalue().splitlines() == [
        "Nothing to delete",
        "",
        "Total reclaimable space: 0B (0 bytes)",
    ]
    assert store_verify().ok
    complete(image_lookup(f"{registry.host}/team/app:v1"))


# -- the other deletes look at the rows too -----------------------------------------------------


def test_rmi_leaves_a_blob_an_image_recorded_after_its_rows_went(
    registry: Registry, seed: Seed
) -> None:
    store = get_store()
    app = pulled(f"{registry.host}/team/app:v1")
    app_chain = chain_ids([seed.base.diff_id, seed.app.diff_id])[1]
    with transaction.atomic():
        image_remove(image=f"{registry.host}/team/app:v1")
        # between rmi's rows and its files, a job judged the app layer's blob present under
        # its lease, recorded an image naming it over another base, and ended
        Layer.objects.create(
            chain_id="sha256:" + "12" * 32,
            digest=seed.app.digest,
            diff_id=seed.app.diff_id,
            media_type="application/vnd.oci.image.layer.v1.tar+zstd",
            size=seed.app.size,
        )
    assert store.blobs.has(seed.app.digest)  # a row names it: it stays
    assert Blob.objects.filter(digest=seed.app.digest).exists()
    assert not store.blobs.has(app.config_digest)  # what nothing names went
    assert not store.snapshots.exists(app_chain)


def test_a_failed_import_keeps_a_blob_it_added_that_an_image_recorded_meanwhile(
    registry: Registry, seed: Seed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = f"{registry.host}/team/app:v1"
    pulled(reference)
    store = get_store()
    archive = tmp_path / "app.tar"
    call_command("save", reference, "-o", str(archive), stdout=io.StringIO())
    image_remove(image=reference)
    assert list(store.blobs.digests()) == []
    broken = tmp_path / "broken.tar"
    top = f"{seed.app.diff_id.split(':')[1]}/layer.tar"
    with tarfile.open(archive) as src, tarfile.open(broken, "w") as dst:
        for member in src.getmembers():
            if member.name == top:  # the import fails on the top layer
                member.size = 3
                dst.addfile(member, io.BytesIO(b"bad"))
            else:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    real_take_back = archive_module._Intake.take_back
    kept: list[str] = []

    def recorded_meanwhile(self: Any, in_use: Callable[[str], bool], *guard: Any) -> None:
        # another job judged the first blob this import added present, recorded it, ended
        kept.append(self.added[0])
        Layer.objects.create(
            chain_id="sha256:" + "34" * 32,
            digest=self.added[0],
            diff_id=self.added[0],
            media_type="application/vnd.oci.image.layer.v1.tar",
            size=1,
        )
        real_take_back(self, in_use, *guard)

    monkeypatch.setattr(archive_module._Intake, "take_back", recorded_meanwhile)
    job = image_import(team=default_team(), path=str(broken))
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert list(store.blobs.digests()) == kept  # the rest was taken back
