"""Layers at the machine's limit: one pass over each layer's bytes, layers in parallel, the
store flushed once.

A layer missing from the store is downloaded into ``tmp/`` (hashed as it is written) while
an unpacker reads that same file as it grows: inflating, hashing the tar (its DiffID) and
writing the tree into ``tmp/`` too. The network's bytes are read once, and once more from the
page cache, never from the disk. Unpacks run as many at a time as the machine has cores
(largest layer first: it is the long pole), downloads a few more than that; a layer whose
blob is already here is unpacked from it, one whose snapshot is already here only
downloaded. An unpack hands its file creation to a writer process of its own (fswriter.py)
only once no layer waits for an unpack slot: until then every core has an unpack to run.

Nothing is published before everything checks out: a blob once its size and digest match,
a tree once its DiffID matches and its blob verified. Then one ``syncfs`` flushes the store,
the blobs and trees are renamed into ``blobs/`` and ``snapshots/``, and those two
directories are flushed: one flush per pull instead of one per blob and per layer, and a
crash at any moment leaves in ``blobs/`` and ``snapshots/`` only what is complete and on
disk (the rest is ``tmp/`` leftovers, swept). A failed or cancelled pull publishes what was
verified before it stopped (as a pull one blob at a time would have kept it) and nothing
else.

A pull holds the lock of each blob it downloads and each snapshot it unpacks from the moment
it judges them missing until they are published. It takes them without waiting: a layer
whose lock another worker holds (that worker is fetching or unpacking it) is done after
everything else is published, by waiting for that lock then, holding none, so two pulls
never wait for each other in a circle, and a shared layer is still fetched and unpacked once.

An unpack that fails on a layer's content (a hostile tar, a wrong DiffID) does not stop a
pull: the blob is still kept, and the layer is reported unpacked-not, for an unpack job to
retry and explain.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from . import fsutil
from .apply import ApplyResult, apply_layer
from .cancel import Cancelled, StopFn, never, stop_point
from .digest import chain_ids, digest_hex
from .errors import BlobNotFound, DigestMismatch
from .file_index import FileRecord
from .manifest import Descriptor
from .snapshots import StagedSnapshot
from .store import BlobSink, BlobStore, BlobWriter, Store
from .store import Descriptor as BlobDescriptor
from .unpacker import Unpacker, UnpackerDied

WAITING = "Waiting"
DOWNLOADING = "Downloading"
DOWNLOADED = "Download complete"
EXISTS = "Already exists"
EXTRACTING = "Extracting"
COMPLETE = "Pull complete"

# digest, status, bytes done, bytes in all
ProgressFn = Callable[[str, str, int, int], None]
# downloads one blob into the given blob store: (descriptor, store, bytes-so-far callback,
# told-the-host callback or None)
FetchFn = Callable[
    [Descriptor, BlobSink, Callable[[int], None], Callable[[str], None] | None],
    BlobDescriptor,
]
SourceFn = Callable[[str, str], None]


def default_unpacks() -> int:
    """Layers unpacked at once: one per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class UnpackedLayer:
    """A layer's snapshot: its ChainID, and what it holds when this call unpacked it (a
    snapshot found made is not walked again: whoever made it recorded its sizes).
    ``error`` is why a pull could not unpack it (the blob is kept; an unpack job retries)."""

    chain_id: str
    diff_id: str
    created: bool
    unpacked_size: int | None
    file_count: int | None  # entries that are not directories (files, links, devices)
    error: Exception | None = None
    # the layer's file index when this call unpacked it (see file_index.py)
    files: tuple[FileRecord, ...] | None = None

    @property
    def present(self) -> bool:
        """Whether the snapshot is in the store now."""
        return self.error is None


class _Restarted(Exception):
    """The download started over (another mirror, or a registry that ignored a Range)."""


class _SourceGone(Exception):
    """The download failed, or the pull stopped: the unpack reading it stops too."""


class _Growing:
    """A blob's bytes as they arrive: the file in ``tmp/`` a download is writing, or a
    finished blob. Readers wait for bytes, and learn of a restart or a failure."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.generation = 0
        self.path: str | None = None
        self.written = 0
        self.done = False
        self.failed = False

    @classmethod
    def finished(cls, path: str, size: int) -> _Growing:
        """A blob already whole on disk."""
        grown = cls()
        grown.path, grown.written, grown.done = path, size, True
        return grown

    def start(self, path: str) -> None:
        """A download (or a new attempt of it) begins writing ``path``."""
        with self._cond:
            self.generation += 1
            self.path, self.written = path, 0
            self._cond.notify_all()

    def advance(self, size: int) -> None:
        with self._cond:
            self.written = size
            self._cond.notify_all()

    def finish(self) -> None:
        """The download is complete and its digest verified."""
        with self._cond:
            self.done = True
            self._cond.notify_all()

    def fail(self) -> None:
        with self._cond:
            self.failed = True
            self._cond.notify_all()

    def wait_start(self, stop: threading.Event) -> int:
        """Wait until a download writes (or the blob is whole); its generation."""
        with self._cond:
            while self.path is None:
                if self.failed or stop.is_set():
                    raise _SourceGone
                self._cond.wait(0.2)
            return self.generation

    def available(self, generation: int, offset: int, stop: threading.Event) -> int:
        """Bytes readable at ``offset`` (0 at the verified end), waiting for more."""
        with self._cond:
            while True:
                if self.failed or stop.is_set():
                    raise _SourceGone
                if self.generation != generation:
                    raise _Restarted
                if offset < self.written:
                    return self.written - offset
                if self.done:
                    return 0
                self._cond.wait(0.2)


class _GrowingReader(io.RawIOBase):
    """Reads a ``_Growing`` blob from its start, following the download."""

    def __init__(
        self, grown: _Growing, stop: threading.Event, on_read: Callable[[int], None]
    ) -> None:
        super().__init__()
        self._grown = grown
        self._stop = stop
        self._on_read = on_read
        self._generation = grown.wait_start(stop)
        assert grown.path is not None
        self._fd = os.open(grown.path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        ready = self._grown.available(self._generation, self.offset, self._stop)
        if not ready:
            return 0
        n = os.preadv(self._fd, [view[: min(len(view), ready)]], self.offset)
        if n == 0:  # the file is shorter than announced: only a restart does that
            raise _Restarted
        self.offset += n
        self._on_read(self.offset)
        return n

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()


class _StagedWriter(BlobWriter):
    """A blob writer whose ``commit`` only verifies: the blob waits in ``tmp/`` to be
    published with the rest of the pull."""

    def commit(self) -> BlobDescriptor:
        self.descriptor = self.verify()
        return self.descriptor


class _StagingBlobs:
    """The blob store as a download into it is seen: writers that stage, and tell the
    layer's unpacker where the bytes are."""

    def __init__(self, blobs: BlobStore, grown: _Growing) -> None:
        self._blobs = blobs
        self._grown = grown
        self.staged: _StagedWriter | None = None

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None
    ) -> BlobWriter:
        writer = _StagedWriter(self._blobs, expected_digest, expected_size)
        writer.listener = self._grown.advance
        self.staged = writer
        self._grown.start(str(writer.tmp_path))
        return writer


@dataclass
class _Layer:
    desc: Descriptor
    diff_id: str
    chain_id: str
    lock: fsutil.HeldLock | None = None
    staged: StagedSnapshot | None = None
    applied: ApplyResult | None = None
    error: Exception | None = None
    deferred: bool = False
    exists: bool = False


@dataclass
class _Blob:
    desc: Descriptor
    grown: _Growing | None = None
    lock: fsutil.HeldLock | None = None
    staging: _StagingBlobs | None = None
    deferred: bool = False
    fetch: bool = False
    # in an object store: copied into tmp/ for its unpacks (``copy`` is that file)
    remote: bool = False
    copy: fsutil.TempEntry | None = None
    unpacks_left: int = 0
    downloaded: bool = False
    users: list[_Layer] = field(default_factory=list)


def _lock_path(store: Store, kind: str, digest: str) -> Path:
    return store.locks / f"{kind}-{digest_hex(digest)}.lock"


class LayerPipeline:
    """Brings a list of layers into the store as blobs and snapshots (see the module's
    docstring). ``fetch`` downloads a blob (None: every blob must be in the store already,
    the unpack job's case). ``progress`` is called from worker threads; ``heartbeat`` and
    ``should_stop`` from the calling thread (``should_stop`` also from download threads at
    every chunk when ``fetch`` is given: it must then be cheap)."""

    def __init__(
        self,
        store: Store,
        layers: Sequence[Descriptor],
        diff_ids: Sequence[str],
        *,
        fetch: FetchFn | None = None,
        progress: ProgressFn,
        should_stop: StopFn = never,
        heartbeat: Callable[[], None] | None = None,
        source: SourceFn | None = None,
        downloads: int = 3,
        unpacks: int | None = None,
        durable: bool = True,
        keep_going: bool = False,
        processes: bool = True,
    ) -> None:
        self.store = store
        # unpack in processes of their own (unpacker.py): one core each
        self.processes = processes
        self.privileged = os.geteuid() == 0
        self._idle: list[Unpacker] = []
        self.fetch = fetch
        self.progress = progress
        self.should_stop = should_stop
        self.heartbeat = heartbeat
        self.source = source
        self.downloads = max(1, downloads)
        self.unpacks = max(1, unpacks or default_unpacks())
        self.durable = durable
        # a pull goes on when a layer's content cannot be unpacked (its blob is still
        # wanted); an unpack job stops with that error
        self.keep_going = keep_going
        self.layers = [
            _Layer(desc, diff_id, chain)
            for desc, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True)
        ]
        self.blobs: dict[str, _Blob] = {}
        for layer in self.layers:
            self.blobs.setdefault(layer.desc.digest, _Blob(layer.desc)).users.append(layer)
        self.stop = threading.Event()  # the pull failed or was cancelled: everyone stops
        self.flush_seconds = 0.0  # time spent in the one flush (for benchmarks)
        self._lock = threading.Lock()
        # what the downloads and unpacks write goes to disk while they run: the one flush
        # before publishing then has little left to wait for
        self._writeback: fsutil.EarlyWriteback | None = None
        self._spare_flag: Path | None = None

    # -- planning ----------------------------------------------------------------------------

    def _plan(self) -> None:
        """Judge what is missing, under the locks (the caller leased everything first)."""
        store = self.store
        for blob in self.blobs.values():
            digest = blob.desc.digest
            lock = fsutil.try_file_lock(_lock_path(store, "blob", digest))
            if lock is None:
                blob.deferred = True
                continue
            if store.blobs.has(digest):
                lock.release()  # leased: nothing deletes it while we read it
                local = store.blobs.local_path(digest)
                if local is None:  # unpacked from a copy in tmp/, made as it is read
                    blob.remote, blob.grown = True, _Growing()
                else:
                    blob.grown = _Growing.finished(str(local), blob.desc.size)
            elif self.fetch is None:
                lock.release()
                raise BlobNotFound(f"blob {digest} is not in the store")
            else:
                blob.lock, blob.fetch, blob.grown = lock, True, _Growing()
        for layer in self.layers:
            blob = self.blobs[layer.desc.digest]
            if blob.deferred:
                layer.deferred = True
                continue
            lock = fsutil.try_file_lock(_lock_path(store, "snapshot", layer.chain_id))
            if lock is None:
                layer.deferred = True
            elif store.snapshots.exists(layer.chain_id):
                lock.release()
                layer.exists = True
            else:
                layer.lock = lock
                blob.unpacks_left += 1

    # -- progress ----------------------------------------------------------------------------

    def _say(self, blob: _Blob, status: str, current: int) -> None:
        self.progress(blob.desc.digest, status, current, blob.desc.size)

    def _first_lines(self) -> None:
        for blob in self.blobs.values():
            if blob.fetch or blob.deferred or blob.unpacks_left:
                self._say(blob, WAITING, 0)
            else:
                self._say(blob, EXISTS, blob.desc.size)

    def _unpack_read(self, blob: _Blob, offset: int) -> None:
        if blob.downloaded or not blob.fetch:
            self._say(blob, EXTRACTING, offset)

    def _layer_settled(self, blob: _Blob) -> None:
        """A layer of ``blob`` was unpacked (or given up on): say so once all are and the
        download is done (whichever ends last says it)."""
        with self._lock:
            blob.unpacks_left -= 1
            last = blob.unpacks_left == 0 and (blob.downloaded or not blob.fetch)
        if last:
            self._say_done(blob)

    def _say_done(self, blob: _Blob) -> None:
        made = any(layer.applied is not None for layer in blob.users)
        self._say(blob, COMPLETE if made else DOWNLOADED, blob.desc.size)

    # -- the work ----------------------------------------------------------------------------

    def _download(self, blob: _Blob) -> None:
        assert self.fetch is not None
        assert blob.grown is not None
        grown = blob.grown
        staging = _StagingBlobs(self.store.blobs, grown)
        blob.staging = staging
        digest = blob.desc.digest

        def downloading(done: int) -> None:
            if self.stop.is_set():
                raise InterruptedError("another layer failed")
            stop_point(self.should_stop, f"download of {digest}")
            self._say(blob, DOWNLOADING, done)

        source = self.source
        served = None if source is None else (lambda host: source(digest, host))
        try:
            stop_point(self.should_stop, f"download of {digest}")
            self.fetch(blob.desc, staging, downloading, served)
        except BaseException:
            grown.fail()
            self.stop.set()
            raise
        grown.finish()
        with self._lock:
            blob.downloaded = True
            pending = blob.unpacks_left
        if pending:  # the unpack goes on: its reads say "Extracting" from here
            self._say(blob, DOWNLOADED, blob.desc.size)
        else:
            self._say_done(blob)

    def _copy_down(self, blob: _Blob) -> None:
        """Read a blob of the object store into a file in ``tmp/`` that its unpacks follow
        as it grows (as they follow a download); the file goes when the pipeline ends."""
        grown = blob.grown
        assert grown is not None
        try:
            blob.copy = fsutil.TempEntry(self.store.tmp, "blob-copy-", directory=False)
            out = io.FileIO(blob.copy.fd, "wb", closefd=False)
            grown.start(str(blob.copy.path))
            written = 0
            with self.store.blobs.open(blob.desc.digest) as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    if self.stop.is_set():
                        raise InterruptedError("another layer failed")
                    out.write(chunk)
                    written += len(chunk)
                    grown.advance(written)
        except BaseException:
            grown.fail()
            self.stop.set()
            raise
        grown.finish()

    def _unpack(self, layer: _Layer) -> None:
        blob = self.blobs[layer.desc.digest]
        assert blob.grown is not None
        try:
            while True:
                staged = self.store.snapshots.stage()
                try:
                    layer.applied = self._apply(layer, blob, staged)
                except _Restarted:
                    staged.discard()
                    continue
                except BaseException:
                    staged.discard()
                    raise
                layer.staged = staged
                return
        except _SourceGone:
            return  # the download's own error is the one reported
        except Cancelled:
            self.stop.set()
            raise
        except Exception as exc:
            if not self.keep_going:
                self.stop.set()
                raise
            layer.error = exc
        finally:
            self._layer_settled(blob)

    def _apply(self, layer: _Layer, blob: _Blob, staged: StagedSnapshot) -> ApplyResult:
        unpacker = self._take_unpacker()
        result = (
            self._apply_here(blob, staged)
            if unpacker is None
            else self._apply_in(unpacker, blob, staged)
        )
        if result.diff_id != layer.diff_id:
            raise DigestMismatch(layer.diff_id, result.diff_id, "layer DiffID")
        return result

    def _take_unpacker(self) -> Unpacker | None:
        """An idle unpacker process, or a new one (None: unpack in this thread)."""
        if not self.processes:
            return None
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return Unpacker()
        except OSError:  # pragma: no cover - no process to be had: do it here
            return None

    def _apply_in(self, unpacker: Unpacker, blob: _Blob, staged: StagedSnapshot) -> ApplyResult:
        """Unpack in ``unpacker``'s process, telling it how far the download has come."""
        grown = blob.grown
        assert grown is not None
        generation = grown.wait_start(self.stop)
        assert grown.path is not None
        path = grown.path
        problem: list[BaseException] = []

        def forward() -> None:
            sent = 0
            try:
                while ready := grown.available(generation, sent, self.stop):
                    sent += ready
                    unpacker.send({"size": sent})
                unpacker.send({"end": sent})
            except (_Restarted, _SourceGone) as exc:
                problem.append(exc)
                unpacker.kill()
            except (OSError, ValueError):
                pass  # the child is gone (it failed): its own answer says why

        unpacker.start(
            path,
            staged.tree,
            whiteouts=self.store.whiteouts.name,
            limits=self.store.snapshots.limits_for(),
            privileged=self.privileged,
            # beside the tree, in tmp/: read and removed before the tree is published
            index=staged.tree.parent / "files.index",
            spare=self._spare_flag,
        )
        forwarder = threading.Thread(target=forward, name="layer-forward", daemon=True)
        forwarder.start()
        try:
            result = unpacker.result(lambda n: self._unpack_read(blob, n))
        except UnpackerDied:
            forwarder.join(1)
            if problem:
                raise problem[0] from None
            raise
        forwarder.join()  # the child read to the end: everything was forwarded
        with self._lock:
            self._idle.append(unpacker)
        return result

    def _apply_here(self, blob: _Blob, staged: StagedSnapshot) -> ApplyResult:
        """Unpack in this thread (one process: for small layers and tests)."""
        assert blob.grown is not None
        reader = _GrowingReader(blob.grown, self.stop, lambda n: self._unpack_read(blob, n))
        with reader:
            result = apply_layer(
                cast(BinaryIO, reader),
                staged.tree,
                whiteouts=self.store.whiteouts,
                limits=self.store.snapshots.limits_for(),
            )
            # the whole blob was read, its digest checked: only then is the tree its own
            if blob.grown.available(reader._generation, reader.offset, self.stop):
                raise _Restarted  # pragma: no cover - apply reads to the end
        return result

    def run(self) -> list[UnpackedLayer]:
        """Do it all; the layers' snapshots in order, or the first error."""
        try:
            self._plan()
            self._first_lines()
            if self.durable:
                self._writeback = fsutil.EarlyWriteback(self.store.tmp)
            error = self._run_parallel()
            self._publish()
        finally:
            if self._writeback is not None:
                self._writeback.close()
            self._release()
            if self._spare_flag is not None:
                self._spare_flag.unlink(missing_ok=True)
            for unpacker in self._idle:
                unpacker.close()
            self._idle.clear()
        if error is not None:
            raise error
        self._deferred()
        return [
            UnpackedLayer(
                layer.chain_id,
                layer.diff_id,
                layer.applied is not None,
                None if layer.applied is None else layer.applied.unpacked_size,
                None if layer.applied is None else layer.applied.file_count,
                layer.error,
                None if layer.applied is None else layer.applied.files,
            )
            for layer in self.layers
        ]

    def _run_parallel(self) -> BaseException | None:
        """Run the downloads and unpacks; the first real failure, if any (not the knock-on
        ones of the work it stopped)."""
        todo = deque(
            sorted(
                (layer for layer in self.layers if layer.lock is not None),
                key=lambda layer: -layer.desc.size,
            )
        )
        fetches = [blob for blob in self.blobs.values() if blob.fetch]
        copies = [blob for blob in self.blobs.values() if blob.remote and blob.unpacks_left]
        if not todo and not fetches:
            return None
        futures: list[Future[None]] = []
        if self.processes and self.unpacks > 1:
            self._spare_flag = self.store.tmp / f"spare-{os.getpid()}-{id(self):x}"
        with (
            ThreadPoolExecutor(self.downloads, "layer-download") as downloads,
            ThreadPoolExecutor(self.unpacks, "layer-unpack") as unpacks,
        ):
            futures += [downloads.submit(self._download, blob) for blob in fetches]
            futures += [downloads.submit(self._copy_down, blob) for blob in copies]
            running: set[Future[None]] = set()
            pending: set[Future[None]] = set(futures)
            while todo or pending:
                while todo and len(running) < self.unpacks and not self.stop.is_set():
                    try:
                        stop_point(self.should_stop, "unpack")
                    except Cancelled as exc:
                        # an unpack job stops at its next layer: the running ones end and
                        # are kept; a pull stops everything at once
                        if self.fetch is not None:
                            self.stop.set()
                        todo.clear()
                        futures.append(_failed(exc))
                        break
                    future = unpacks.submit(self._unpack, todo.popleft())
                    running.add(future)
                    pending.add(future)
                    futures.append(future)
                if self.stop.is_set():
                    todo.clear()
                if not todo and len(running) < self.unpacks and self._spare_flag is not None:
                    # an unpack slot is free for good: the running unpacks may use its core
                    # for a writer process (fswriter.py)
                    self._spare_flag.touch()
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                running -= done
                if self.heartbeat is not None:
                    self.heartbeat()
        errors = [err for f in futures if (err := f.exception()) is not None]
        errors.sort(key=lambda err: isinstance(err, InterruptedError))
        return errors[0] if errors else None

    def _publish(self) -> None:
        """Flush once, then rename every verified blob and tree into place."""
        blobs = [b for b in self.blobs.values() if b.downloaded and b.staging is not None]
        trees = [
            layer
            for layer in self.layers
            if layer.staged is not None and self.blobs[layer.desc.digest].grown is not None
        ]
        trees = [t for t in trees if self._verified(t)]
        for layer in self.layers:  # what did not check out is not kept
            if layer.staged is not None and layer not in trees:
                layer.staged.discard()
                layer.staged, layer.applied = None, None
        if not blobs and not trees:
            return
        if self.durable:
            if self._writeback is not None:
                self._writeback.close()
            started = time.monotonic()
            fsutil.syncfs(self.store.tmp)
            self.flush_seconds = time.monotonic() - started
        try:
            self._publish_blobs(blobs)
        except BaseException:
            # a blob that could not be published (an object store that failed): no tree of
            # this pull is kept either, as a pull stopped before the flush keeps none
            for layer in trees:
                assert layer.staged is not None
                layer.staged.discard()
                layer.staged, layer.applied = None, None
            raise
        for layer in trees:
            assert layer.staged is not None
            layer.staged.publish(layer.chain_id)
        if self.durable:
            if blobs:
                self.store.blobs.flush()
            if trees:
                fsutil.fsync_dir(self.store.snapshots.root)

    def _publish_blobs(self, blobs: list[_Blob]) -> None:
        """Rename the blobs into ``blobs/``, or upload them to the object store, a few at a
        time (as many as downloads run)."""
        writers = []
        for blob in blobs:
            assert blob.staging is not None
            assert blob.staging.staged is not None
            writers.append(blob.staging.staged)
        local = blobs and self.store.blobs.local_path(blobs[0].desc.digest) is not None
        if local or len(writers) < 2:
            for writer in writers:
                writer.publish(durable=False)
            return
        with ThreadPoolExecutor(self.downloads, "blob-publish") as pool:
            for future in [pool.submit(w.publish, durable=False) for w in writers]:
                future.result()

    def _verified(self, layer: _Layer) -> bool:
        blob = self.blobs[layer.desc.digest]
        return not blob.fetch or blob.downloaded

    def _release(self) -> None:
        for blob in self.blobs.values():
            if blob.staging is not None and blob.staging.staged is not None:
                blob.staging.staged.abort()  # harmless once published
            if blob.copy is not None:
                blob.copy.close(remove=True)
            if blob.lock is not None:
                blob.lock.release()
        for layer in self.layers:
            if layer.staged is not None and layer.applied is None:
                layer.staged.discard()
            if layer.lock is not None:
                layer.lock.release()

    def _deferred(self) -> None:
        """Layers another worker was busy with: wait for it (holding no lock), then do what
        it left undone, one at a time (the rare case of two pulls sharing a new layer)."""
        for blob in self.blobs.values():
            if blob.deferred:
                self._deferred_blob(blob)
        for layer in self.layers:
            if layer.deferred:
                self._deferred_layer(layer)
        for blob in self.blobs.values():
            if blob.deferred and not any(layer.deferred for layer in blob.users):
                self._say(blob, DOWNLOADED if blob.downloaded else EXISTS, blob.desc.size)

    def _deferred_blob(self, blob: _Blob) -> None:
        digest = blob.desc.digest
        with fsutil.file_lock(_lock_path(self.store, "blob", digest)):
            if self.store.blobs.has(digest):
                return
            if self.fetch is None:
                raise BlobNotFound(f"blob {digest} is not in the store")
            source = self.source
            self.fetch(
                blob.desc,
                self.store.blobs,
                lambda done: self._say(blob, DOWNLOADING, done),
                None if source is None else (lambda host: source(digest, host)),
            )
            blob.downloaded = True

    def _deferred_layer(self, layer: _Layer) -> None:
        blob = self.blobs[layer.desc.digest]
        stop_point(self.should_stop, "unpack")

        def fill(tree: Path) -> ApplyResult:
            with self.store.blobs.open(layer.desc.digest) as f:
                limits = self.store.snapshots.limits_for()
                result = apply_layer(f, tree, whiteouts=self.store.whiteouts, limits=limits)
            if result.diff_id != layer.diff_id:
                raise DigestMismatch(layer.diff_id, result.diff_id, "layer DiffID")
            return result

        try:
            made = self.store.snapshots.build(layer.chain_id, fill, durable=self.durable)
        except Exception as exc:
            if not self.keep_going or isinstance(exc, Cancelled):
                raise
            layer.error = exc
            self._say(blob, DOWNLOADED, blob.desc.size)
            return
        layer.applied = made.applied
        done = DOWNLOADED if blob.downloaded else EXISTS
        self._say(blob, COMPLETE if made.applied is not None else done, blob.desc.size)


def _failed(exc: BaseException) -> Future[None]:
    future: Future[None] = Future()
    future.set_exception(exc)
    return future
