"""Files stored twice, and the dedup that stores them once, on images pulled from a real
registry: two builds of one distribution on different days (the same files but one config
file with the build date, so no layer in common), a top layer both share by blob over their
different bases, and files that must never be linked.

Measured on disk (``disk_bytes``: the sum of st_size under blobs/ and snapshots/, a hardlinked
inode once) against the report, the job, the sizes, ``store_verify`` and the delete plans."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest
from django.core.management import call_command
from pytest_django import Settings

from layerhub.containers.services import (
    container_create,
    container_diff,
    container_dir,
    container_fs,
    container_rename,
    container_write_file,
    image_lowers,
)
from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine.dedup import TEMP_PREFIX
from layerhub.engine.diff import write_diff_tar
from layerhub.engine.union import UnionView
from layerhub.images.dedup import duplicates_report
from layerhub.images.file_index import layer_files_from_snapshot
from layerhub.images.gc import store_gc
from layerhub.images.leases import job_lease
from layerhub.images.models import DedupLink, Image, Layer
from layerhub.images.services.dedup import store_dedup_report, store_dedup_start
from layerhub.images.services.transfer import image_remove, image_save_stream
from layerhub.images.sizes import image_delete_plan, images_with_sizes, store_totals
from layerhub.images.verify import store_verify
from layerhub.jobs.models import Job
from tests.registry.test_sizes import disk_bytes, pulled
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, Tree, make_layer, write_layout
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# the distribution's files: the same bytes in both builds
DISTRO: Tree = {
    "etc": None,
    "usr": None,
    "usr/bin": None,
    "usr/lib": None,
    **{f"usr/bin/tool{i}": _random(100 + i, 20_000 + 1_000 * i) for i in range(8)},
    **{f"usr/lib/lib{i}.so": _random(200 + i, 30_000 + 500 * i) for i in range(8)},
    # one content at two paths of one layer: never linked to each other
    "usr/lib/twin-a": _random(300, 15_000),
    "usr/lib/twin-b": _random(300, 15_000),
}
DISTRO_BYTES = sum(len(v) for v in DISTRO.values() if isinstance(v, bytes))
TOP: Tree = {
    "usr": None,
    "usr/lib": None,
    # the same bytes as the base's lib0.so, in another snapshot of the same image
    "usr/lib/lib0-copy.so": DISTRO["usr/lib/lib0.so"],
    "usr/lib/app.so": _random(400, 25_000),
}


def _build(date: bytes) -> LayerBlob:
    return make_layer({**DISTRO, "etc/build-date": date})


@pytest.fixture(scope="module")
def builds(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> str:
    layout = write_layout(
        tmp_path_factory.mktemp("dedup-layout"),
        {
            "bookworm-20261101": OciImage([_build(b"2026-11-01\n"), make_layer(TOP)]),
            "bookworm-20261115": OciImage([_build(b"2026-11-15\n"), make_layer(TOP)]),
        },
    )
    for tag in ("bookworm-20261101", "bookworm-20261115"):
        registry.push_layout(layout, tag, "dedup/debian")
    return f"{registry.host}/dedup/debian"


def _pull_and_index(name: str) -> tuple[Image, Image]:
    first = pulled(f"{name}:bookworm-20261101")
    second = pulled(f"{name}:bookworm-20261115")
    store = get_store()
    for layer in Layer.objects.all():
        layer_files_from_snapshot(layer, store.snapshots.path(layer.chain_id), store.whiteouts)
    return first, second


def _image_sizes() -> dict[int, int]:
    return {i.pk: i.size for i in images_with_sizes()}  # type: ignore[attr-defined]


def _data(value: object) -> bytes:
    assert isinstance(value, bytes)
    return value


def _saved(image: Image) -> bytes:
    out = io.BytesIO()
    image_save_stream(images=[image.manifest_digest], out=out)
    return out.getvalue()


def _union(image: Image) -> dict[str, tuple[str, int, bytes]]:
    view = UnionView(image_lowers(image), get_store().whiteouts)
    found = {}
    for entry in view.walk("/"):
        data = view.read_bytes(entry.path) if entry.kind == "file" else b""
        found[entry.path] = (entry.kind, entry.st.st_mode, data)
    return found


def _dedup(*, dry_run: bool) -> Job:
    job = store_dedup_start(dry_run=dry_run)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return job


def test_the_report_finds_the_twins_and_dedup_frees_exactly_their_copies(
    builds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = _pull_and_index(builds)
    store = get_store()
    # the report: the two builds share no layer, but all their files except the date
    report = duplicates_report()
    [pair] = report.pairs
    assert not pair.share_layers
    assert {pair.first, pair.second} == {
        f"{builds}:bookworm-20261101",
        f"{builds}:bookworm-20261115",
    }
    files_each = len([v for v in DISTRO.values() if v is not None]) + 1 + 2  # + date + top
    assert pair.total_files == 2 * files_each
    assert pair.shared_files == 2 * (files_each - 1)  # all but the build date
    assert round(pair.percent) == round(100 * (files_each - 1) / files_each)
    distinct_top = len(_data(TOP["usr/lib/app.so"]))  # lib0-copy is lib0's content
    assert pair.shared_bytes == DISTRO_BYTES - 15_000 + distinct_top  # each content once
    assert "share no layer but" in pair.sentence()
    # what linking frees: base B's copy of every distro file (one path per snapshot, so only
    # one of the twins), the second top's app.so, and both tops' copies of lib0.so
    lib0 = len(_data(DISTRO["usr/lib/lib0.so"]))
    twins = 15_000
    expected_free = DISTRO_BYTES - twins + len(_data(TOP["usr/lib/app.so"])) + 2 * lib0
    assert report.copy_bytes >= expected_free
    per_image = {d.image_id: d for d in report.images}
    assert per_image[first.pk].duplicate_bytes == per_image[second.pk].duplicate_bytes > 0

    before_disk = disk_bytes()
    before_totals = store_totals()
    before_sizes = _image_sizes()
    before_save = {i.pk: _saved(i) for i in (first, second)}
    before_union = {i.pk: _union(i) for i in (first, second)}
    dir_times = {
        f: os.lstat(f).st_mtime_ns
        for layer in Layer.objects.all()
        for f, _, _ in os.walk(store.snapshots.path(layer.chain_id))
    }

    dry = store_dedup_report(_dedup(dry_run=True))
    assert dry is not None
    assert disk_bytes() == before_disk  # a dry run changes nothing
    assert not DedupLink.objects.exists()
    run = store_dedup_report(_dedup(dry_run=False))
    assert run is not None
    freed = before_disk - disk_bytes()
    assert freed == run.freed_bytes == dry.freed_bytes == expected_free
    assert run.files_linked == dry.files_linked

    # two paths of one snapshot stay two files
    for layer in Layer.objects.all():
        tree = store.snapshots.path(layer.chain_id)
        if (tree / "usr/lib/twin-a").exists():
            assert (
                os.lstat(tree / "usr/lib/twin-a").st_ino != os.lstat(tree / "usr/lib/twin-b").st_ino
            )
    # directory times of every snapshot are what they were
    assert {f: os.lstat(f).st_mtime_ns for f in dir_times} == dir_times

    # sizes: physical counts linked bytes once, SIZE stays logical, savings grow
    after = store_totals()
    assert after.physical_bytes == disk_bytes() == before_totals.physical_bytes - freed
    assert after.dedup_bytes == freed
    assert after.savings_bytes == before_totals.savings_bytes + freed
    assert after.logical_bytes == before_totals.logical_bytes
    assert _image_sizes() == before_sizes
    assert duplicates_report().stored_twice_bytes == report.stored_twice_bytes - freed
    verify = store_verify()
    assert verify.ok, verify.findings
    assert verify.snapshot_bytes - verify.snapshot_physical_bytes == freed
    assert "stored once by dedup" in verify.summary()
    call_command("store_verify")
    assert "stored once by dedup" in capsys.readouterr().out
    call_command("df", "-v")
    out = capsys.readouterr().out
    images_row = out.splitlines()[1].split()
    assert images_row[0] == "Images"
    assert images_row[3] == human_size(after.physical_bytes)  # physical: linked files once
    assert f"stored once (dedup): {human_size(freed)} saved" in out

    # every image reads back the same: union view and `save`, byte for byte
    for image in (first, second):
        assert _saved(image) == before_save[image.pk]
        assert _union(image) == before_union[image.pk]

    # a second run has nothing left to free
    again = store_dedup_report(_dedup(dry_run=False))
    assert again is not None
    assert again.freed_bytes == 0
    assert disk_bytes() == before_disk - freed

    # deleting one image frees only what it holds alone; the other, the rest, to the byte
    plan = image_delete_plan(first)
    before = disk_bytes()
    image_remove(image=first.manifest_digest, force=True)
    assert before - disk_bytes() == plan.frees_bytes
    assert store_totals().physical_bytes == disk_bytes()
    assert store_verify().ok
    assert _union(second) == before_union[second.pk]
    last = image_delete_plan(second)
    before = disk_bytes()
    image_remove(image=second.manifest_digest, force=True)
    assert before - disk_bytes() == last.frees_bytes
    assert disk_bytes() == 0
    assert store_totals().physical_bytes == 0


def test_a_container_copies_up_and_commits_as_before_dedup(builds: str) -> None:
    first, second = _pull_and_index(builds)
    _dedup(dry_run=False)
    store = get_store()
    shared = "usr/lib/lib3.so"
    trees = [store.snapshots.path(layer.chain_id) for layer in Layer.objects.all()]
    holders = [t / shared for t in trees if (t / shared).exists()]
    assert len({os.lstat(p).st_ino for p in holders}) == 1  # linked across the two builds
    original = holders[0].read_bytes()

    container = container_create(image=first.manifest_digest, team=default_team())
    # a copy-up writes a new file, never through the shared inode
    container_write_file(container=container, path=f"/{shared}", data=b"patched")
    for path in holders:
        assert path.read_bytes() == original
    assert container_fs(container).view.read_bytes(f"/{shared}") == b"patched"
    # renaming a directory copies the merged tree: lib0.so (base) and lib0-copy.so (top) share
    # an inode only through dedup, so the copies stay two files and the layer has no hardlink
    container_rename(container=container, src="/usr/lib", dst="/usr/lib2")
    changes = {str(c) for c in container_diff(container=container)}
    assert "A /usr/lib2/lib0-copy.so" in changes
    assert "D /usr/lib" in changes
    upper = container_dir(container) / "upper"
    lib2 = upper / "usr/lib2"
    assert os.lstat(lib2 / "lib0.so").st_ino != os.lstat(lib2 / "lib0-copy.so").st_ino
    out = io.BytesIO()
    write_diff_tar(upper, store.whiteouts, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = tar.getmembers()
    assert not [m.name for m in members if m.islnk()]
    assert {m.name for m in members} >= {"usr/lib2/lib0.so", "usr/lib2/lib0-copy.so"}
    # the other image, whose files share those inodes, reads back as it was
    view = UnionView(image_lowers(second), store.whiteouts)
    assert view.read_bytes(f"/{shared}") == original


def test_never_a_container_layer_nor_files_that_differ_in_attributes(
    builds: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = _pull_and_index(builds)
    container = container_create(image=first.manifest_digest, team=default_team())
    container_write_file(
        container=container, path="/usr/lib/lib5.so", data=_data(DISTRO["usr/lib/lib5.so"])
    )
    upper_file = container_dir(container) / "upper/usr/lib/lib5.so"
    call_command("dedup", "--dry-run")
    printed = capsys.readouterr().out
    # base B's 16 distro files and one twin, both tops' lib0 copies, the second top's app.so
    assert "would link 20 files of 18 shared contents" in printed
    # a run killed between its link and its rename left a temporary name: the next removes it
    store = get_store()
    trees = [store.snapshots.path(layer.chain_id) for layer in Layer.objects.all()]
    bases = [t for t in trees if (t / "usr/lib/lib5.so").exists()]
    left = bases[1] / "usr/lib" / f"{TEMP_PREFIX}00000000000000aa"
    os.link(bases[0] / "usr/lib/lib5.so", left)
    assert not store_verify().ok  # the snapshot holds a file its layer does not
    report = store_dedup_report(_dedup(dry_run=False))
    assert report is not None
    assert report.leftovers == 1
    assert not left.exists()
    assert store_verify().ok
    assert os.lstat(upper_file).st_nlink == 1  # the writable layer is never linked
    # the command queues the job, follows it and prints what it did
    call_command("dedup", "--dry-run")
    assert "would link 0 files" in capsys.readouterr().out  # all linked already
    assert all(".layerhub-dedup-" not in str(p) for p in Path(get_store().root).rglob("*"))


def test_garbage_collection_frees_exactly_with_hardlinked_files(builds: str) -> None:
    first, second = _pull_and_index(builds)
    _dedup(dry_run=False)
    store = get_store()
    second_union = _union(second)
    # rmi while a running job holds the first build's layers: rows and trees stay, then the
    # job ends and they are garbage, whose files the second build still links in part
    holder = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    layers = list(first.image_layers.select_related("layer").order_by("position"))
    job_lease(job=holder, keys=[row.layer.chain_id for row in layers])
    image_remove(image=first.manifest_digest, force=True)
    assert all(store.snapshots.exists(row.layer.chain_id) for row in layers)
    holder.finish()
    # and a snapshot no row names any more, that shares files with the second build
    orphan = layers[-1].layer.chain_id
    Layer.objects.filter(chain_id=orphan).delete()
    dry = store_gc(dry_run=True)
    before = disk_bytes()
    run = store_gc()
    assert {(i.what, i.key) for i in run.items} == {(i.what, i.key) for i in dry.items}
    assert before - disk_bytes() == run.freed_bytes == dry.freed_bytes
    assert store_totals().physical_bytes == disk_bytes()
    assert store_verify().ok
    assert _union(second) == second_union
