"""The layer pipeline: one pass over each layer's bytes, layers in parallel, one flush.

Downloads are played by a ``fetch`` that writes the blob into the store's writer in chunks,
as the registry client does (pausing, failing, or starting over when a test says so).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layerhub.engine import fsutil, pipeline
from layerhub.engine.digest import chain_ids, digest_hex
from layerhub.engine.errors import DigestMismatch, LayerError
from layerhub.engine.file_index import walk_snapshot
from layerhub.engine.manifest import Descriptor
from layerhub.engine.pipeline import LayerPipeline
from layerhub.engine.store import BlobSink, Store
from layerhub.engine.store import Descriptor as BlobDescriptor
from layerhub.engine.unpacker import Unpacker
from tests.support.oci import LayerBlob, Tree, make_layer

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024


def content(name: str, i: int, size: int) -> bytes:
    return random.Random(f"{name}{i}").randbytes(size)


def big_layer(name: str, files: int = 40, size: int = 100_000) -> LayerBlob:
    """A gzip layer of ``files`` incompressible files: many chunks of blob."""
    tree: Tree = {name: None}
    for i in range(files):
        tree[f"{name}/f{i:03d}"] = content(name, i, size)
    return make_layer(tree)


def desc(layer: LayerBlob) -> Descriptor:
    return Descriptor(layer.media_type, layer.digest, layer.size)


class Registry:
    """Serves blobs to the pipeline's ``fetch``; ``hooks[digest](offset)`` runs before each
    chunk (to pause, fail or check something mid-download)."""

    def __init__(self, *layers: LayerBlob) -> None:
        self.blobs = {layer.digest: layer.data for layer in layers}
        self.hooks: dict[str, Callable[[int], None]] = {}
        self.restart_at: dict[str, int] = {}  # serve this many bytes, then start over once
        self.corrupt: set[str] = set()

    def fetch(
        self,
        d: Descriptor,
        blobs: BlobSink,
        done: Callable[[int], None],
        served: Callable[[str], None] | None,
    ) -> BlobDescriptor:
        data = self.blobs[d.digest]
        if d.digest in self.corrupt:
            data = data[:-10] + bytes(10)
        cut = self.restart_at.pop(d.digest, None)
        if cut is not None:  # a mirror that sends part, then the registry sends it all
            with blobs.writer(d.digest, d.size) as first:
                first.write(data[:cut])
        with blobs.writer(d.digest, d.size) as writer:
            for offset in range(0, len(data), CHUNK):
                hook = self.hooks.get(d.digest)
                if hook is not None:
                    hook(offset)
                writer.write(data[offset : offset + CHUNK])
                done(writer.size)
            return writer.commit()


def run(
    store: Store,
    registry: Registry | None,
    layers: list[LayerBlob],
    diff_ids: list[str] | None = None,
    **options: object,
) -> list[pipeline.UnpackedLayer]:
    lines: list[tuple[str, str, int, int]] = []
    options.setdefault("progress", lambda *line: lines.append(line))
    return LayerPipeline(
        store,
        [desc(layer) for layer in layers],
        diff_ids or [layer.diff_id for layer in layers],
        fetch=None if registry is None else registry.fetch,
        keep_going=registry is not None,
        **options,  # type: ignore[arg-type]
    ).run()


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_layer_is_unpacked_while_it_downloads(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = big_layer("a")
    registry = Registry(layer)
    seen_during_download: list[int] = []

    def halfway(offset: int) -> None:
        # past the middle of the blob, wait until files of the layer are already written
        if offset >= layer.size // 2 and not seen_during_download:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                written = list(store.tmp.glob("unpack-*/fs/a/*"))
                if written:
                    seen_during_download.append(len(written))
                    return
                time.sleep(0.01)

    registry.hooks[layer.digest] = halfway
    [made] = run(store, registry, [layer])
    assert seen_during_download, "nothing was unpacked before the download ended"
    assert made.created
    assert made.error is None
    assert store.blobs.has(layer.digest)
    tree = tree_files(store.snapshots.get(made.chain_id))
    assert len(tree) == 40
    assert tree["a/f007"] == content("a", 7, 100_000)
    assert list(store.tmp.iterdir()) == []


def test_a_blob_whose_digest_is_wrong_keeps_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    good, bad = big_layer("good"), big_layer("bad")
    registry = Registry(good, bad)
    registry.corrupt.add(bad.digest)
    with pytest.raises(DigestMismatch):
        run(store, registry, [good, bad])
    assert not store.blobs.has(bad.digest)
    assert not store.snapshots.exists(chain_ids([good.diff_id, bad.diff_id])[1])
    assert list(store.tmp.iterdir()) == []


def test_a_wrong_diff_id_keeps_the_blob_and_no_snapshot(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = big_layer("a")
    wrong = "sha256:" + "0" * 64
    [result] = run(store, Registry(layer), [layer], diff_ids=[wrong])
    assert isinstance(result.error, DigestMismatch)
    assert not result.present
    assert store.blobs.has(layer.digest)  # verified: kept, for an unpack job to report on
    assert list(store.snapshots.root.iterdir()) == []
    assert list(store.tmp.iterdir()) == []
    # the unpack job's run (blobs from the store) stops with the error
    with pytest.raises(DigestMismatch):
        run(store, None, [layer], diff_ids=[wrong])
    assert list(store.tmp.iterdir()) == []


def test_a_hostile_layer_does_not_stop_the_others(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    hostile = make_layer({"../escape": b"x"})
    fine = big_layer("fine", files=3)
    results = run(store, Registry(hostile, fine), [hostile, fine])
    assert isinstance(results[0].error, LayerError)
    assert results[1].created
    assert store.blobs.has(hostile.digest)
    assert store.snapshots.exists(results[1].chain_id)
    assert not store.snapshots.exists(results[0].chain_id)
    assert not (tmp_path / "escape").exists()


def test_a_download_that_starts_over_unpacks_what_it_ends_with(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    layer = big_layer("a")
    registry = Registry(layer)
    registry.restart_at[layer.digest] = layer.size // 3
    [made] = run(store, registry, [layer])
    assert made.created
    assert len(tree_files(store.snapshots.get(made.chain_id))) == 40
    assert list(store.tmp.iterdir()) == []


def test_existing_blobs_and_snapshots_are_not_made_again(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a, b = big_layer("a", files=2), big_layer("b", files=2)
    registry = Registry(a, b)
    run(store, registry, [a])  # a's blob and snapshot are here now
    registry.blobs.pop(a.digest)  # asking for it again would fail
    lines: list[tuple[str, str, int, int]] = []
    results = run(store, registry, [a, b], progress=lambda *line: lines.append(line))
    assert [r.created for r in results] == [False, True]
    final = {digest: status for digest, status, _, _ in lines}
    assert final == {a.digest: "Already exists", b.digest: "Pull complete"}
    # the blob only (the snapshot lost): unpacked from the store, not fetched
    store.snapshots.remove(results[1].chain_id)
    lines.clear()
    again = run(store, registry, [a, b], progress=lambda *line: lines.append(line))
    assert [r.created for r in again] == [False, True]
    assert [s for d, s, _, _ in lines if d == b.digest][-1] == "Pull complete"
    assert "Downloading" not in {s for _, s, _, _ in lines}


def test_layers_unpack_in_parallel_largest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    small, large = big_layer("small", files=5), big_layer("large", files=60)
    spans: dict[str, list[float]] = {}
    real_apply = pipeline.apply_layer  # type: ignore[attr-defined]

    def timed(stream: Any, dest: Path, **kwargs: Any) -> Any:
        start = time.monotonic()
        time.sleep(0.3)  # long enough that two unpacks at once must overlap
        result = real_apply(stream, dest, **kwargs)
        spans[result.diff_id] = [start, time.monotonic()]
        return result

    monkeypatch.setattr(pipeline, "apply_layer", timed)
    # in this process's threads, where the test can time them (processes are tested below)
    run(store, Registry(small, large), [small, large], unpacks=2, processes=False)
    (s0, s1), (l0, l1) = spans[small.diff_id], spans[large.diff_id]
    assert s0 < l1  # the two ran at once
    assert l0 < s1
    spans.clear()
    for chain in store.snapshots.chain_ids():
        store.snapshots.remove(chain)
    run(store, None, [small, large], unpacks=1, processes=False)  # one at a time if told so
    (s0, s1), (l0, l1) = spans[small.diff_id], spans[large.diff_id]
    assert l1 <= s0  # the long pole first


def test_each_unpack_slot_has_a_process_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=8) for name in "abcd"]
    pids: list[int] = []
    real_start = Unpacker.start

    def start(self: Unpacker, *args: Any, **kwargs: Any) -> None:
        pids.append(self._proc.pid)
        real_start(self, *args, **kwargs)

    monkeypatch.setattr(Unpacker, "start", start)
    results = run(store, Registry(*layers), layers, unpacks=2)
    assert all(r.created for r in results)
    assert len(pids) == 4  # a layer each
    assert len(set(pids)) == 2  # two processes, each reused for a second layer
    assert os.getpid() not in pids
    for layer, result in zip(layers, results, strict=True):
        name = layer.diff_id  # each tree is its own layer's
        assert len(tree_files(store.snapshots.get(result.chain_id))) == 8, name


def test_the_store_is_flushed_once_and_before_anything_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=4) for name in "abc"]
    events: list[str] = []
    real_syncfs, real_rename, real_replace = fsutil.syncfs, os.rename, os.replace
    real_fsync = os.fsync

    def syncfs(path: Path) -> None:
        events.append("syncfs")
        real_syncfs(path)

    def rename(src: object, dst: object) -> None:
        events.append(f"rename {dst}")
        real_rename(src, dst)  # type: ignore[arg-type]

    def replace(src: object, dst: object) -> None:
        events.append(f"rename {dst}")
        real_replace(src, dst)  # type: ignore[arg-type]

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(fsutil, "syncfs", syncfs)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    run(store, Registry(*layers), layers)
    published = [e for e in events if e.startswith("rename")]
    assert len(published) == 6  # three blobs, three snapshots
    assert events.count("syncfs") == 1
    first = events.index(published[0])
    assert events.index("syncfs") < first  # every byte on disk before any rename
    # after the renames, only the two directories are flushed (no fsync per file or layer)
    assert events[first:].count("fsync") == 2
    assert events[:first].count("fsync") == 0


def test_early_writeback_passes_until_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[Path] = []
    monkeypatch.setattr(fsutil, "write_back", passes.append)
    early = fsutil.EarlyWriteback(tmp_path, interval=0.01)
    deadline = time.monotonic() + 10
    while len(passes) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    early.close()
    early._thread.join(5)
    assert not early._thread.is_alive()
    assert len(passes) >= 3
    assert set(passes) == {tmp_path}
    made = len(passes)
    time.sleep(0.05)
    assert len(passes) == made  # none after close


@pytest.mark.parametrize("fail", [False, True])
def test_a_pull_writes_back_early_and_leaves_no_writeback_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=4) for name in "ab"]
    made: list[fsutil.EarlyWriteback] = []
    real = fsutil.EarlyWriteback

    def early(path: Path) -> fsutil.EarlyWriteback:
        made.append(real(path, interval=0.001))
        return made[-1]

    monkeypatch.setattr(fsutil, "EarlyWriteback", early)
    passes: list[Path] = []
    monkeypatch.setattr(fsutil, "write_back", passes.append)
    registry = Registry(*layers)
    if fail:
        registry.corrupt.add(layers[1].digest)
        with pytest.raises(DigestMismatch):
            run(store, registry, layers)
    else:
        run(store, registry, layers)
    assert len(made) == 1
    assert made[0]._path == store.tmp
    made[0]._thread.join(5)
    assert not made[0]._thread.is_alive()
    if not fail:
        assert passes, "no early pass during a pull of two layers"


CRASH_CHILD = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from layerhub.engine import fsutil, pipeline
from layerhub.engine.store import Store
from tests.engine.test_pipeline import Registry, big_layer, desc

where = sys.argv[3]
layers = [big_layer(name, files=6) for name in "abc"]
store = Store(Path(sys.argv[2]))
real_rename = os.rename
renamed = []

def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

if where == "before-flush":
    fsutil.syncfs = lambda path: die()
else:
    def rename(src, dst):
        real_rename(src, dst)
        renamed.append(dst)
        if len(renamed) == 4:  # three blobs and one snapshot are in place
            die()
    os.rename = rename
    os.replace = rename
pipeline.LayerPipeline(
    store, [desc(l) for l in layers], [l.diff_id for l in layers],
    fetch=Registry(*layers).fetch, progress=lambda *a: None,
).run()
"""


@pytest.mark.parametrize("where", ["before-flush", "mid-publish"])
def test_a_crash_leaves_nothing_that_looks_complete_and_is_not(tmp_path: Path, where: str) -> None:
    root = tmp_path / "store"
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(ROOT), str(root), where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    store = Store(root)
    layers = [big_layer(name, files=6) for name in "abc"]
    chains = chain_ids([layer.diff_id for layer in layers])
    blobs = set(store.blobs.digests())
    snapshots = set(store.snapshots.chain_ids())
    if where == "before-flush":
        assert blobs == set()
        assert snapshots == set()
    else:
        assert blobs == {layer.digest for layer in layers}
        assert len(snapshots) == 1
    # what is in place is whole: every blob hashes to its name, every snapshot is its layer
    for digest in blobs:
        assert hashlib.sha256(store.blobs.read_bytes(digest)).hexdigest() == digest_hex(digest)
    for chain in snapshots:
        assert chain in chains
        assert len(tree_files(store.snapshots.get(chain))) == 6
    # the rest is tmp/ leftovers, which a start-up sweep removes; a pull then completes
    assert store.sweep_tmp() > 0
    assert list(store.tmp.iterdir()) == []
    results = run(store, Registry(*layers), layers)
    assert all(r.present for r in results)
    assert set(store.snapshots.chain_ids()) == set(chains)


def test_a_layer_another_worker_holds_is_waited_for_not_made_twice(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    shared, own = big_layer("shared", files=3), big_layer("own", files=3)
    registry = Registry(shared, own)
    chain = chain_ids([shared.diff_id])[0]
    # another worker is making the shared layer's snapshot: it holds the lock
    other = fsutil.try_file_lock(store.locks / f"snapshot-{digest_hex(chain)}.lock")
    assert other is not None

    def the_other_worker_finishes() -> None:
        time.sleep(0.5)
        os.makedirs(store.snapshots.path(chain))  # its snapshot, published
        other.release()

    threading.Thread(target=the_other_worker_finishes).start()
    results = run(store, registry, [shared, own])
    assert [r.created for r in results] == [False, True]
    assert store.blobs.has(shared.digest)


def test_an_unpacker_that_dies_leaves_its_layer_to_an_unpack_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store")
    victim, fine = big_layer("victim", files=30), big_layer("fine", files=3)
    real_result = Unpacker.result

    def killed(self: Unpacker, on_read: Callable[[int], None]) -> Any:
        if self._started_with == victim:  # type: ignore[attr-defined]
            os.kill(self._proc.pid, signal.SIGKILL)  # out of memory, say
        return real_result(self, on_read)

    real_start = Unpacker.start

    def start(self: Unpacker, path: str, *args: Any, **kwargs: Any) -> None:
        self._started_with = victim if victim.digest.split(":")[1] in path else fine  # type: ignore[attr-defined]
        real_start(self, path, *args, **kwargs)

    monkeypatch.setattr(Unpacker, "start", start)
    monkeypatch.setattr(Unpacker, "result", killed)
    store.blobs.put_bytes(victim.data, victim.digest)  # unpacked from the store's file
    results = run(store, Registry(victim, fine), [victim, fine])
    assert results[0].error is not None
    assert "ended without an answer" in str(results[0].error)
    assert results[1].created
    assert store.blobs.has(victim.digest)
    assert not store.snapshots.exists(results[0].chain_id)
    assert list(store.tmp.iterdir()) == []
    # an error a child reports comes back as the same type, with its attributes
    hostile = make_layer({"../escape": b"x"})
    with pytest.raises(LayerError) as raised:
        run(store, None, [hostile]) if store.blobs.put_bytes(hostile.data) else None
    assert getattr(raised.value, "name", None) == "../escape"


@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_each_made_layer_comes_with_its_file_index(tmp_path: Path, processes: bool) -> None:
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=6, size=5_000) for name in "ab"]
    results = run(store, Registry(*layers), layers, unpacks=2, processes=processes)
    for result in results:
        assert result.created
        assert result.files is not None
        tree = store.snapshots.get(result.chain_id)
        assert list(result.files) == list(walk_snapshot(tree, store.whiteouts))
        name = result.files[0].path
        assert (
            result.files[1].sha256
            == hashlib.sha256((tree / result.files[1].path).read_bytes()).digest()
        ), name
    # the index files went back to the parent: nothing of them in the snapshots or tmp/
    assert list(store.tmp.iterdir()) == []
    assert not list(store.snapshots.root.glob("*/files.index"))
    again = run(store, Registry(*layers), layers)
    assert [r.files for r in again] == [None, None]  # found made: not walked again


def test_a_writer_process_waits_until_no_layer_waits_for_a_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While layers wait for an unpack slot every core has an unpack to run: the unpacks
    are told a core is spare (the flag file exists) only once none waits."""
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=8) for name in "abc"]
    starts: list[tuple[Path | None, bool]] = []
    real_start = Unpacker.start

    def start(self: Unpacker, *args: Any, spare: Path | None = None, **kwargs: Any) -> None:
        starts.append((spare, spare is not None and spare.exists()))
        real_start(self, *args, spare=spare, **kwargs)

    monkeypatch.setattr(Unpacker, "start", start)
    results = run(store, Registry(*layers), layers, unpacks=2)
    assert all(r.created for r in results)
    flags = {flag for flag, _ in starts}
    assert len(flags) == 1  # one flag for the whole pull, in the store's tmp/
    (flag,) = flags
    assert flag is not None
    assert flag.parent == store.tmp
    assert [exists for _, exists in starts[:2]] == [False, False]  # a third layer waited
    assert not flag.exists()  # gone with the pull

    # one layer, two slots: a core is spare from the start
    seen: list[bool] = []
    real_result = Unpacker.result

    def result(self: Unpacker, on_read: Callable[[int], None]) -> Any:
        deadline = time.monotonic() + 10
        while not (spare := starts[-1][0]) or not spare.exists():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        seen.append(spare is not None and spare.exists())
        return real_result(self, on_read)

    monkeypatch.setattr(Unpacker, "result", result)
    one = big_layer("one", files=8)
    assert run(store, Registry(one), [one], unpacks=2)[0].created
    assert seen == [True]
    assert list(store.tmp.iterdir()) == []


def test_one_unpack_slot_has_no_spare_core_to_wait_for(tmp_path: Path) -> None:
    """With one slot the writer process is the only way to use a second core: no flag."""
    store = Store(tmp_path / "store")
    layers = [big_layer(name, files=4) for name in "ab"]
    pipe = LayerPipeline(
        store,
        [desc(layer) for layer in layers],
        [layer.diff_id for layer in layers],
        fetch=Registry(*layers).fetch,
        progress=lambda *line: None,
        unpacks=1,
    )
    assert all(r.created for r in pipe.run())
    assert pipe._spare_flag is None
