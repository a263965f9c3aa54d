"""The blob-store interface both drivers implement, and the writer they share.

A blob is written into the layer store's ``tmp/`` (hashed while written), checked against the
digest and size it was announced with, and only then published by the driver: renamed into
``blobs/`` (local) or uploaded create-only (S3). A reader never sees a partial blob and a
mismatch leaves nothing behind, in ``tmp/`` or in the blob store. Writes stop with StoreFull
before the local file system's free space drops below the store's reserve, and on ENOSPC.
"""

from __future__ import annotations

import abc
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol, cast

from .. import fsutil
from ..digest import CHUNK, CheckedDigester, validate_digest
from ..errors import DISK_FULL, StoreFull

# how often a blob writer looks at the free space again
FREE_CHECK_BYTES = 8 << 20


@dataclass(frozen=True)
class Descriptor:
    """A blob's identity: its digest and its size in bytes."""

    digest: str
    size: int


@dataclass(frozen=True)
class BlobEntry:
    """What a listing of the blob store found: the entry's name in ``sha256/``, its digest
    (None for anything that is not a blob: a stray name, a directory) and its size."""

    name: str
    digest: str | None
    size: int


@dataclass(frozen=True)
class PendingUpload:
    """An upload into the blob store begun and neither completed nor aborted (an object
    store's multipart upload, which a client killed in the middle of it leaves behind): the
    blob it was to become (its name in ``sha256/`` and its digest), the upload's id, and
    when it began (None when the store did not say)."""

    name: str
    digest: str
    upload_id: str
    initiated: datetime | None


class BlobSink(Protocol):
    """What a download writes into: a blob store, or a stand-in that stages its writers."""

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None
    ) -> BlobWriter:
        """A writer for a new blob."""
        ...


class BlobWriter:
    """Writes one blob: ``write()`` chunks, then ``commit()``; closing uncommitted discards it."""

    def __init__(
        self, store: BlobStore, expected_digest: str | None, expected_size: int | None
    ) -> None:
        if expected_digest is not None:
            validate_digest(expected_digest)
        self._store = store
        store.check_free()
        self._next_check = FREE_CHECK_BYTES
        try:
            self._tmp = fsutil.TempEntry(store.tmp, "blob-", directory=False)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise store.full() from exc
            raise
        self._file = io.FileIO(self._tmp.fd, "wb", closefd=False)
        what = f"blob {expected_digest}" if expected_digest else "blob"
        self._digester = CheckedDigester(expected_digest, expected_size, what)
        self.descriptor: Descriptor | None = None
        self._verified: Descriptor | None = None
        # told the blob's length after every write (a reader following the download)
        self.listener: Callable[[int], None] | None = None

    @property
    def tmp_path(self) -> Path:
        """The file in ``tmp/`` being written: what a reader following the download opens."""
        return self._tmp.path

    @property
    def tmp_fd(self) -> int:
        """The open descriptor of ``tmp_path`` (the driver publishes from it)."""
        return self._tmp.fd

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._digester.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append a chunk; fails early once more than the announced size arrives."""
        self._digester.update(data)
        try:
            if self._digester.size >= self._next_check:
                self._next_check = self._digester.size + FREE_CHECK_BYTES
                self._store.check_free()
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0 :]
        except StoreFull:
            self.abort()
            raise
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            self.abort()
            raise self._store.full() from exc
        if self.listener is not None:
            self.listener(self._digester.size)
        return len(data)

    def commit(self) -> Descriptor:
        """Verify, make durable and publish; return the blob's descriptor."""
        self.verify()
        return self.publish(durable=True)

    def verify(self) -> Descriptor:
        """Check the size and digest of what was written; the blob stays in ``tmp/`` (see
        ``publish``). A mismatch discards it."""
        try:
            digest = self._digester.check()
        except BaseException:
            self._tmp.close(remove=True)
            raise
        self._verified = Descriptor(digest, self._digester.size)
        return self._verified

    def publish(self, *, durable: bool) -> Descriptor:
        """Hand the verified blob to the blob store. With ``durable`` on the local driver its
        bytes and the rename are flushed here; without, the caller has flushed the file
        system since the last write (one ``syncfs`` for a whole pull) and calls the store's
        ``flush`` afterwards."""
        verified = self._verified
        if verified is None:
            raise RuntimeError("publish() before verify()")
        try:
            self._store.publish(self._tmp.path, self._tmp.fd, verified, durable=durable)
        except BaseException:
            self._tmp.close(remove=True)
            raise
        # the local driver renamed it away; any other copied it and the file goes now
        self._tmp.close(remove=self._tmp.path.exists())
        self.descriptor = verified
        return verified

    def abort(self) -> None:
        """Discard what was written."""
        self._tmp.close(remove=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.descriptor is None:
            self.abort()


class BlobStore(abc.ABC):
    """Immutable blobs addressed by their sha256 digest (see the module docstring).

    ``tmp`` is the layer store's ``tmp/`` (writes in flight); ``reserve`` the free space
    writes leave on its file system.
    """

    def __init__(
        self, tmp: Path, *, reserve: int = 0, free: Callable[[], int] | None = None
    ) -> None:
        self.tmp = tmp
        self.reserve = reserve
        self._free = free or (lambda: fsutil.free_bytes(tmp))

    # -- what a driver provides ---------------------------------------------------------------

    @abc.abstractmethod
    def has(self, digest: str) -> bool:
        """Whether the store holds the blob."""

    @abc.abstractmethod
    def size(self, digest: str) -> int:
        """The blob's size in bytes (BlobNotFound if it is not there)."""

    @abc.abstractmethod
    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading: a seekable stream (a seek starts a Range read on the
        object store). BlobNotFound if it is not there."""

    @abc.abstractmethod
    def delete(self, digest: str) -> bool:
        """Remove a blob; return whether it was there."""

    @abc.abstractmethod
    def list(self) -> Iterator[BlobEntry]:
        """Everything the blob namespace holds (for garbage collection and verify)."""

    @abc.abstractmethod
    def publish(self, path: Path, fd: int, blob: Descriptor, *, durable: bool) -> None:
        """Make the verified file ``path`` (open as ``fd``) the blob ``blob``, create-only:
        when the blob is already there, the one there stays (its bytes are the same)."""

    @abc.abstractmethod
    def local_path(self, digest: str) -> Path | None:
        """The blob's file, when this driver keeps blobs as local files (whether or not the
        blob is there); None for an object store."""

    @abc.abstractmethod
    def where(self, name: str = "") -> str:
        """How people find the entry ``name`` of ``list()`` (or the whole store)."""

    def flush(self) -> None:  # noqa: B027 - only the local driver has something to flush
        """Make publishes done with ``durable=False`` durable (a local directory's fsync)."""

    def pending_uploads(self) -> Sequence[PendingUpload]:
        """Uploads begun and never completed nor aborted (for garbage collection); the local
        driver has none (its writes in flight are ``tmp/`` files)."""
        return []

    def pending_upload_size(self, upload: PendingUpload) -> int:
        """The bytes a pending upload holds so far (0 once it is gone)."""
        return 0

    def abort_upload(self, upload: PendingUpload) -> bool:
        """Abort a pending upload (what it holds goes); whether it was still there."""
        return False

    # -- shared ------------------------------------------------------------------------------

    def check_free(self) -> None:
        """Raise StoreFull if the file system has less free space than the reserve."""
        if self.reserve > 0:
            free = self._free()
            if free < self.reserve:
                raise StoreFull(free, self.reserve)

    def full(self) -> StoreFull:
        """The error for a write the file system refused for want of space (ENOSPC)."""
        return StoreFull(self._free(), 0)

    def open_range(self, digest: str, offset: int, length: int | None = None) -> BinaryIO:
        """The blob's bytes from ``offset`` (``length`` of them, or to the end)."""
        f = self.open(digest)
        try:
            f.seek(offset)
        except BaseException:
            f.close()
            raise
        if length is None:
            return f
        return cast(BinaryIO, io.BufferedReader(_Limited(f, length)))

    def read_bytes(self, digest: str) -> bytes:
        """The whole blob (for small blobs: configs, manifests)."""
        with self.open(digest) as f:
            return f.read()

    def writer(
        self, expected_digest: str | None = None, expected_size: int | None = None
    ) -> BlobWriter:
        """A writer for a new blob; with no expected digest the blob is named by its content."""
        return BlobWriter(self, expected_digest, expected_size)

    def ingest(
        self,
        stream: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> Descriptor:
        """Copy ``stream`` into the store, verified; nothing is left behind on any failure."""
        with self.writer(expected_digest, expected_size) as w:
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                w.write(chunk)
            return w.commit()

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> Descriptor:
        """Store a small blob held in memory."""
        with self.writer(expected_digest, None) as w:
            w.write(data)
            return w.commit()

    def digests(self) -> Iterator[str]:
        """Every blob held."""
        for entry in self.list():
            if entry.digest is not None:
                yield entry.digest


class _Limited(io.RawIOBase):
    """At most ``length`` bytes of an open stream, from where it stands."""

    def __init__(self, inner: BinaryIO, length: int) -> None:
        self._inner = inner
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[: self._left]
        data = self._inner.read(len(view))
        view[: len(data)] = data
        self._left -= len(data)
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()
