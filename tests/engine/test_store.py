"""The content store and the store around it: verified blobs, crash leftovers, usage, store.json.

Promises under test: a blob is written to ``tmp/``, hashed, checked and only then renamed into
``blobs/``; a mismatch leaves nothing anywhere; ``sweep_tmp`` removes what crashed writers
left and never what a live writer holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from layerhub.engine.digest import chain_id, sha256_bytes
from layerhub.engine.errors import BlobNotFound, DigestMismatch, SizeMismatch, SnapshotNotFound
from layerhub.engine.store import Descriptor, Store
from layerhub.engine.whiteouts import overlay_supported
from tests.support.blobs import local_blobs

if TYPE_CHECKING:
    from tests.engine.layerkit import Kit

FORK = multiprocessing.get_context("fork")
DATA = b"layer bytes " * 1000


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def oci_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store", whiteouts="oci")


def blob_names(store: Store) -> list[str]:
    return sorted(p.name for p in local_blobs(store).root.iterdir())


def tmp_names(store: Store) -> list[str]:
    return sorted(p.name for p in store.tmp.iterdir())


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Trickle(io.RawIOBase):
    """A stream that hands out at most ``step`` bytes per read, so writers interleave."""

    def __init__(self, data: bytes, step: int, pause: float = 0.0) -> None:
        self._data = memoryview(data)
        self._step = step
        self._pause = pause

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._pause:
            time.sleep(self._pause)
        n = self._step if size < 0 else min(size, self._step)
        chunk, self._data = self._data[:n], self._data[n:]
        return bytes(chunk)


# -- writing blobs ----------------------------------------------------------------------------


def test_blob_is_written_in_tmp_verified_and_renamed(oci_store: Store) -> None:
    digest = sha(DATA)
    with oci_store.blobs.writer(digest, len(DATA)) as w:
        w.write(DATA[:5000])
        w.write(memoryview(DATA)[5000:])
        assert w.size == len(DATA)
        # written so far only in tmp/: one in-flight file, nothing in blobs/
        assert len(tmp_names(oci_store)) == 1
        assert blob_names(oci_store) == []
        desc = w.commit()
    assert desc == Descriptor(digest, len(DATA))
    assert blob_names(oci_store) == [digest.split(":")[1]]
    assert local_blobs(oci_store).path(digest) == oci_store.root / "blobs" / "sha256" / digest[7:]
    assert local_blobs(oci_store).path(digest).read_bytes() == DATA
    assert oci_store.blobs.has(digest)
    assert oci_store.blobs.size(digest) == len(DATA)
    assert oci_store.blobs.read_bytes(digest) == DATA
    assert list(oci_store.blobs.digests()) == [digest]
    assert tmp_names(oci_store) == []


def test_blob_without_expected_digest_is_named_by_its_content(oci_store: Store) -> None:
    desc = oci_store.blobs.ingest(io.BytesIO(DATA))
    assert desc == Descriptor(sha(DATA), len(DATA))
    assert oci_store.blobs.put_bytes(b"{}") == Descriptor(sha(b"{}"), 2)
    assert oci_store.blobs.put_bytes(b"{}", sha(b"{}")) == Descriptor(sha(b"{}"), 2)
    assert blob_names(oci_store) == sorted([sha(DATA)[7:], sha(b"{}")[7:]])
    assert tmp_names(oci_store) == []


def test_wrong_digest_leaves_nothing_behind(oci_store: Store) -> None:
    wrong = sha(b"something else")
    with pytest.raises(DigestMismatch) as exc:
        oci_store.blobs.ingest(io.BytesIO(DATA), wrong, len(DATA))
    assert exc.value.expected == wrong
    assert exc.value.actual == sha(DATA)
    with pytest.raises(DigestMismatch):
        oci_store.blobs.put_bytes(DATA, wrong)
    assert blob_names(oci_store) == []
    assert tmp_names(oci_store) == []
    assert not oci_store.blobs.has(wrong)
    assert not oci_store.blobs.has(sha(DATA))


@pytest.mark.parametrize("delta", [-1, +1, -len(DATA) // 2, +len(DATA)])
def test_wrong_size_leaves_nothing_behind(oci_store: Store, delta: int) -> None:
    announced = len(DATA) + delta
    with pytest.raises(SizeMismatch) as exc:
        oci_store.blobs.ingest(io.BytesIO(DATA), sha(DATA), announced)
    assert exc.value.expected == announced
    assert blob_names(oci_store) == []
    assert tmp_names(oci_store) == []


def test_too_long_fails_on_the_write_that_overflows(oci_store: Store) -> None:
    with oci_store.blobs.writer(sha(b"abc"), 3) as w:
        w.write(b"ab")
        with pytest.raises(SizeMismatch) as exc:
            w.write(b"cd")
        assert exc.value.actual == 4
    assert tmp_names(oci_store) == []
    assert blob_names(oci_store) == []


def test_uncommitted_writer_is_discarded(oci_store: Store) -> None:
    with oci_store.blobs.writer(sha(DATA), len(DATA)) as w:
        w.write(DATA)
    assert w.descriptor is None
    assert tmp_names(oci_store) == []
    assert blob_names(oci_store) == []
    w2 = oci_store.blobs.writer()
    w2.write(DATA)
    w2.abort()
    assert tmp_names(oci_store) == []


def test_a_reader_never_sees_a_partial_blob(oci_store: Store) -> None:
    data = os.urandom(1 << 20)
    digest = sha(data)
    path = local_blobs(oci_store).path(digest)
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        # whenever the blob's path exists at all, it holds the whole verified blob
        while not stop.is_set():
            try:
                with oci_store.blobs.open(digest) as f:
                    seen.append(len(f.read()))
            except BlobNotFound:
                pass

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        with oci_store.blobs.writer(digest, len(data)) as w:
            for i in range(0, len(data), 1 << 16):
                w.write(data[i : i + (1 << 16)])
                assert not path.exists()
                assert not oci_store.blobs.has(digest)
                with pytest.raises(BlobNotFound):
                    oci_store.blobs.size(digest)
            w.commit()
        wait_for(lambda: len(seen) > 0, "the reader to read the committed blob")
    finally:
        stop.set()
        thread.join()
    assert set(seen) == {len(data)}
    assert oci_store.blobs.read_bytes(digest) == data


def _ingest_same(root: Path, data: bytes, barrier: object, results: object) -> None:
    store = Store(root)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        desc = store.blobs.ingest(Trickle(data, 1 << 16), sha(data), len(data))  # type: ignore[arg-type]
        results.put(("ok", desc.digest))  # type: ignore[attr-defined]
    except BaseException as exc:
        results.put(("error", repr(exc)))  # type: ignore[attr-defined]


def test_concurrent_writers_of_one_digest_end_with_one_good_blob(oci_store: Store) -> None:
    data = os.urandom(4 << 20)
    writers = 4
    barrier = FORK.Barrier(writers)
    results = FORK.Queue()
    procs = [
        FORK.Process(target=_ingest_same, args=(oci_store.root, data, barrier, results))
        for _ in range(writers)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert outcomes == [("ok", sha(data))] * writers
    assert blob_names(oci_store) == [sha(data)[7:]]
    assert oci_store.blobs.read_bytes(sha(data)) == data
    assert tmp_names(oci_store) == []


def test_delete_and_missing_blobs(oci_store: Store) -> None:
    desc = oci_store.blobs.put_bytes(b"config")
    assert oci_store.blobs.delete(desc.digest) is True
    assert oci_store.blobs.delete(desc.digest) is False
    assert not oci_store.blobs.has(desc.digest)
    with pytest.raises(BlobNotFound):
        oci_store.blobs.open(desc.digest)
    with pytest.raises(BlobNotFound):
        oci_store.blobs.size(desc.digest)


# -- crashed and live writers -----------------------------------------------------------------


def _write_and_wait(root: Path, conn: object) -> None:
    store = Store(root)
    w = store.blobs.writer(sha(DATA), len(DATA))
    w.write(DATA[:1000])
    conn.send("written")  # type: ignore[attr-defined]
    time.sleep(120)


def _start_writer(root: Path) -> multiprocessing.process.BaseProcess:
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_write_and_wait, args=(root, child))
    proc.start()
    assert parent.poll(30), "the writer process did not start"
    assert parent.recv() == "written"
    return proc


def _kill(proc: multiprocessing.process.BaseProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL


def test_sweep_removes_a_killed_writers_file_but_not_a_live_writers(oci_store: Store) -> None:
    crashed = _start_writer(oci_store.root)
    _kill(crashed)
    leftover = tmp_names(oci_store)
    assert len(leftover) == 1

    live = oci_store.blobs.writer(sha(DATA), len(DATA))
    live.write(DATA[:100])
    in_flight = [n for n in tmp_names(oci_store) if n not in leftover]
    assert len(in_flight) == 1

    assert oci_store.sweep_tmp() == 1
    assert tmp_names(oci_store) == in_flight
    live.write(DATA[100:])
    assert live.commit() == Descriptor(sha(DATA), len(DATA))
    assert tmp_names(oci_store) == []
    assert oci_store.sweep_tmp() == 0


def test_sweep_spares_a_writer_alive_in_another_process(oci_store: Store) -> None:
    other = _start_writer(oci_store.root)
    try:
        held = tmp_names(oci_store)
        assert len(held) == 1
        assert oci_store.sweep_tmp() == 0
        assert tmp_names(oci_store) == held
    finally:
        _kill(other)
    assert oci_store.sweep_tmp() == 1
    assert tmp_names(oci_store) == []


def _unpack_from_fd(root: Path, cid: str, fd: int) -> None:
    store = Store(root)
    with os.fdopen(fd, "rb") as stream:
        store.snapshots.unpack(cid, stream)


def test_sweep_removes_a_killed_unpack(oci_store: Store, kit: Kit) -> None:
    layer = kit.tar(
        [
            kit.dir("ro", mode=0o555),
            kit.file("ro/first", b"first file"),
            kit.file("big", os.urandom(4 << 20)),
        ]
    )
    cid = sha256_bytes(layer)
    read_fd, write_fd = os.pipe()
    proc = FORK.Process(target=_unpack_from_fd, args=(oci_store.root, cid, read_fd))
    proc.start()
    os.close(read_fd)
    try:
        # the first file and part of the big one (the engine reads its input by the megabyte)
        os.write(write_fd, layer[: (2 << 20) + 10_000])
        wait_for(
            lambda: any((d / "fs" / "ro" / "first").exists() for d in oci_store.tmp.iterdir()),
            "the unpack to write its first file",
        )
    finally:
        _kill(proc)
        os.close(write_fd)
    [unpack_dir] = oci_store.tmp.iterdir()
    assert not oci_store.snapshots.exists(cid)
    assert oci_store.sweep_tmp() == 1
    assert tmp_names(oci_store) == []
    # the dead unpack's lock died with it: the layer unpacks now
    result = oci_store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert result.created
    assert (result.path / "ro" / "first").read_bytes() == b"first file"
    assert not unpack_dir.exists()


# -- snapshots as the store keeps them --------------------------------------------------------


def test_snapshot_lifecycle(oci_store: Store, kit: Kit) -> None:
    layer = kit.tar([kit.dir("etc", mode=0o555), kit.file("etc/hostname", b"box\n")])
    cid = sha256_bytes(layer)
    with pytest.raises(SnapshotNotFound):
        oci_store.snapshots.get(cid)
    first = oci_store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
    assert first.created
    outer = oci_store.root / "snapshots" / cid[7:]
    assert first.path == oci_store.snapshots.get(cid) == outer / "fs"
    assert oci_store.snapshots.chain_ids() == [cid]
    # already there: the stream is not even read
    untouched = io.BytesIO(b"not a tar at all")
    again = oci_store.snapshots.unpack(cid, untouched)
    assert not again.created
    assert again.path == first.path
    assert untouched.tell() == 0
    assert oci_store.snapshots.remove(cid) is True
    assert oci_store.snapshots.remove(cid) is False
    assert not first.path.exists()
    assert not oci_store.snapshots.exists(cid)
    assert tmp_names(oci_store) == []


def test_usage_counts_what_is_on_disk(oci_store: Store, kit: Kit) -> None:
    oci_store.blobs.put_bytes(b"x" * 10)
    oci_store.blobs.put_bytes(b"y" * 20)
    layer = kit.tar(
        [
            kit.file("a", b"abc"),
            kit.dir("d"),
            kit.file("d/b", b"12345"),
            kit.hardlink("d/b-again", "d/b"),  # one inode: counted once
            kit.symlink("link", "d/b"),
            kit.fifo("pipe"),
        ]
    )
    oci_store.snapshots.unpack(chain_id([sha256_bytes(layer)]), io.BytesIO(layer))
    (oci_store.containers / "c1").mkdir()
    (oci_store.containers / "c2").mkdir()
    usage = oci_store.usage()
    assert (usage.blob_count, usage.blob_bytes) == (2, 30)
    # bytes of regular files, each inode once (what the layer's files hold)
    assert (usage.snapshot_count, usage.snapshot_bytes) == (1, 3 + 5)
    assert usage.container_count == 2


def test_empty_store_usage(oci_store: Store) -> None:
    usage = oci_store.usage()
    assert (usage.blob_count, usage.blob_bytes, usage.snapshot_count) == (0, 0, 0)
    assert (usage.snapshot_bytes, usage.container_count) == (0, 0)


# -- store.json ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "other"), [("oci", "overlay"), ("overlay", "oci")])
def test_store_json_records_the_whiteout_form(tmp_path: Path, form: str, other: str) -> None:
    root = tmp_path / "store"
    assert Store(root, whiteouts=form).whiteouts.name == form
    assert json.loads((root / "store.json").read_text()) == {"version": 2, "whiteouts": form}
    assert Store(root).whiteouts.name == form  # reopened without asking: what was recorded
    assert Store(root, whiteouts=form).snapshots.whiteouts.name == form
    with pytest.raises(ValueError, match=form):
        Store(root, whiteouts=other)
    assert json.loads((root / "store.json").read_text())["whiteouts"] == form
    assert sorted(p.name for p in root.iterdir()) == [
        "blobs",
        "containers",
        "locks",
        "snapshots",
        "store.json",
        "tmp",
    ]


def test_new_store_without_a_request_picks_what_the_host_allows(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    expected = "overlay" if overlay_supported(root) else "oci"
    assert Store(root).whiteouts.name == expected
    assert json.loads((root / "store.json").read_text())["whiteouts"] == expected


def test_unknown_whiteout_form_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown whiteout form"):
        Store(tmp_path / "store", whiteouts="aufs")
    assert not (tmp_path / "store" / "store.json").exists()


def test_a_racing_creator_asking_for_another_form_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes create one store at once: the loser must not silently take the other form."""
    root = tmp_path / "store"
    real_link = os.link

    def rival_wins_first(src: str, dst: str, *args: object, **kwargs: object) -> None:
        # another process records "oci" between our existence check and our link
        Path(dst).write_text(json.dumps({"version": 1, "whiteouts": "oci"}) + "\n")
        real_link(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", rival_wins_first)
    with pytest.raises(ValueError, match="oci"):
        Store(root, whiteouts="overlay")
    monkeypatch.undo()
    assert Store(root).whiteouts.name == "oci"


def _unpack_same(root: Path, cid: str, layer: bytes, barrier: object, results: object) -> None:
    store = Store(root)
    barrier.wait()  # type: ignore[attr-defined]
    try:
        result = store.snapshots.unpack(cid, io.BytesIO(layer), diff_id=cid)
        results.put(("ok", result.created))  # type: ignore[attr-defined]
    except BaseException as exc:
        results.put(("error", repr(exc)))  # type: ignore[attr-defined]


def test_concurrent_unpacks_of_one_layer_do_the_work_once(oci_store: Store, kit: Kit) -> None:
    layer = kit.tar([kit.file(f"f{i}", os.urandom(10_000)) for i in range(50)])
    cid = sha256_bytes(layer)
    workers = 4
    barrier = FORK.Barrier(workers)
    results = FORK.Queue()
    procs = [
        FORK.Process(target=_unpack_same, args=(oci_store.root, cid, layer, barrier, results))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [("ok", False)] * (workers - 1) + [("ok", True)]
    assert oci_store.snapshots.chain_ids() == [cid]
    assert len(os.listdir(oci_store.snapshots.get(cid))) == 50
    assert tmp_names(oci_store) == []
