"""The layer store on disk and its content-addressed blob store.

```
<root>/blobs/sha256/<hex>    compressed layers, configs, manifests: immutable
<root>/snapshots/<hex>/      one layer unpacked, keyed by its ChainID (see snapshots.py)
<root>/containers/<id>/      writable layers
<root>/tmp/                  in-flight writes: never read as content, swept on start
<root>/locks/                per-digest and per-ChainID lock files
<root>/store.json            how snapshots record whiteouts, decided once when the store is made
```
A blob is written into ``tmp/``, hashed while written, checked against the digest and size it was
announced with, fsynced, and only then renamed into ``blobs/``: a reader never sees a partial
blob, and a mismatch leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from . import fsutil
from .digest import CHUNK, Digester, digest_hex, validate_digest
from .errors import BlobNotFound, DigestMismatch, SizeMismatch
from .whiteouts import WhiteoutFormat, default_format, format_named

STORE_VERSION = 1


@dataclass(frozen=True)
class Descriptor:
    """A blob's identity: its digest and its size in bytes."""

    digest: str
    size: int


@dataclass(frozen=True)
class StoreUsage:
    """What the store holds on disk, measured (never estimated)."""

    blob_count: int
    blob_bytes: int
    snapshot_count: int
    snapshot_bytes: int
    container_count: int


class BlobWriter:
    """Writes one blob: ``write()`` chunks, then ``commit()``; closing uncommitted discards it."""

    def __init__(
        self, store: ContentStore, expected_digest: str | None, expected_size: int | None
    ) -> None:
        if expected_digest is not None:
            validate_digest(expected_digest)
        self._store = store
        self._expected_digest = expected_digest
        self._expected_size = expected_size
        self._tmp = fsutil.TempEntry(store.tmp, "blob-", directory=False)
        self._file = io.FileIO(self._tmp.fd, "wb", closefd=False)
        self._digester = Digester()
        self.descriptor: Descriptor | None = None

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._digester.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append a chunk; fails early once more than the announced size arrives."""
        self._digester.update(data)
        if self._expected_size is not None and self._digester.size > self._expected_size:
            raise SizeMismatch(self._expected_size, self._digester.size, self._what())
        view = memoryview(data)
        while view:
            written = self._file.write(view)
            view = view[written or 0 :]
        return len(data)

    def _what(self) -> str:
        return f"blob {self._expected_digest}" if self._expected_digest else "blob"

    def commit(self) -> Descriptor:
        """Verify, make durable and move into place; return the blob's descriptor."""
        digest, size = self._digester.digest, self._digester.size
        try:
            if self._expected_size is not None and size != self._expected_size:
                raise SizeMismatch(self._expected_size, size, self._what())
            if self._expected_digest is not None and digest != self._expected_digest:
                raise DigestMismatch(self._expected_digest, digest, self._what())
            os.fsync(self._tmp.fd)
            final = self._store.path(digest)
            # Two writers of one digest hold identical verified bytes: the later rename wins
            # and readers of the earlier inode keep reading valid content.
            os.replace(self._tmp.path, final)
            fsutil.fsync_dir(final.parent)
        except BaseException:
            self._tmp.close(remove=True)
            raise
        self._tmp.close(remove=False)
        self.descriptor = Descriptor(digest, size)
        return self.descriptor

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


class ContentStore:
    """Immutable blobs addressed by their sha256 digest."""

    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = root
        self.tmp = tmp

    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it is there)."""
        return self.root / digest_hex(digest)

    def has(self, digest: str) -> bool:
        """Whether the store holds the blob."""
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        """The blob's size in bytes."""
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the store") from None

    def open(self, digest: str) -> BinaryIO:
        """Open the blob for reading."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the store") from None

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

    def delete(self, digest: str) -> bool:
        """Remove a blob; return whether it was there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> Iterator[str]:
        """Every blob held."""
        for entry in self.root.iterdir():
            yield f"sha256:{entry.name}"


class Store:
    """The whole layer store rooted at one directory."""

    def __init__(self, root: Path, whiteouts: str | None = None) -> None:
        from .snapshots import SnapshotStore

        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.containers = self.root / "containers"
        for d in (self.root / "blobs" / "sha256", self.root / "snapshots", self.containers):
            d.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(exist_ok=True)
        self.locks.mkdir(exist_ok=True)
        self.whiteouts: WhiteoutFormat = self._whiteout_format(whiteouts)
        self.blobs = ContentStore(self.root / "blobs" / "sha256", self.tmp)
        self.snapshots = SnapshotStore(
            self.root / "snapshots", tmp=self.tmp, locks=self.locks, whiteouts=self.whiteouts
        )

    def _whiteout_format(self, requested: str | None) -> WhiteoutFormat:
        meta = self.root / "store.json"
        if meta.exists():
            recorded = json.loads(meta.read_text())["whiteouts"]
            if requested is not None and requested != recorded:
                raise ValueError(
                    f"store {self.root} keeps whiteouts as {recorded!r}, not {requested!r}"
                )
            return format_named(recorded)
        fmt = format_named(requested) if requested else default_format(self.root)
        tmp = self.root / f"store.json.{os.getpid()}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps({"version": STORE_VERSION, "whiteouts": fmt.name}) + "\n")
        try:
            os.link(tmp, meta)  # first creator wins; a racing one reads what won
        except FileExistsError:
            recorded = json.loads(meta.read_text())["whiteouts"]
            if requested is not None and requested != recorded:
                raise ValueError(
                    f"store {self.root} keeps whiteouts as {recorded!r}, not {requested!r}"
                ) from None
            return format_named(recorded)
        finally:
            tmp.unlink()
        return fmt

    def sweep_tmp(self) -> int:
        """Remove leftovers of crashed writes from ``tmp/``; return how many."""
        return fsutil.sweep_tmp(self.tmp)

    def usage(self) -> StoreUsage:
        """Count and measure what the store holds."""
        blob_count = blob_bytes = 0
        for entry in os.scandir(self.blobs.root):
            blob_count += 1
            blob_bytes += entry.stat(follow_symlinks=False).st_size
        snapshot_count = snapshot_bytes = 0
        for entry in os.scandir(self.snapshots.root):
            snapshot_count += 1
            snapshot_bytes += fsutil.tree_usage(Path(entry.path))[0]
        container_count = sum(1 for _ in os.scandir(self.containers))
        return StoreUsage(blob_count, blob_bytes, snapshot_count, snapshot_bytes, container_count)
