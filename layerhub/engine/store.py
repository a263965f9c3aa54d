"""The layer store on disk and its content-addressed blob store.

```
<root>/blobs/sha256/<hex>    compressed layers, configs, manifests: immutable
<root>/snapshots/<hex>/fs/   one layer unpacked, keyed by its ChainID (see snapshots.py)
<root>/containers/<id>/      writable layers
<root>/tmp/                  in-flight writes: never read as content, swept on start
<root>/locks/                per-digest and per-ChainID lock files
<root>/store.json            the layout's version, and how snapshots record whiteouts
```
The store holds other people's setuid binaries and device nodes and runs as root: every one of
its directories is 0700, made so and tightened again whenever the store is opened.

A blob is written into ``tmp/``, hashed while written, checked against the digest and size it was
announced with, fsynced, and only then renamed into ``blobs/``: a reader never sees a partial
blob, and a mismatch leaves nothing behind. Writes stop with StoreFull before the file system's
free space drops below the store's reserve, and on ENOSPC.

Layout versions: 1 kept a snapshot's tree at ``snapshots/<hex>/`` itself, so a layer's ``./``
mode opened it to everyone; 2 adds the store-owned ``snapshots/<hex>/`` above ``fs/``. A
version 1 store is migrated in place when opened by a process that can write it
(``migrate_store``), by renames only, resumably.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from . import fsutil
from .digest import CHUNK, Digester, digest_hex, validate_digest
from .errors import BlobNotFound, DigestMismatch, SizeMismatch, StoreFull, StoreLayoutError
from .reserve import DEFAULT_RESERVE as DEFAULT_RESERVE
from .reserve import StoreReserve as StoreReserve
from .whiteouts import WhiteoutFormat, default_format, format_named

STORE_VERSION = 2
# what the refusal to open an old store tells people to run
MIGRATE_COMMAND = "python manage.py store_migrate"
# every directory of the store, made 0700 and kept so
PRIVATE_DIRS = ("", "blobs", "blobs/sha256", "snapshots", "containers", "tmp", "locks")
# how often a blob writer looks at the free space again
FREE_CHECK_BYTES = 8 << 20
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


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
        store.check_free()
        self._next_check = FREE_CHECK_BYTES
        try:
            self._tmp = fsutil.TempEntry(store.tmp, "blob-", directory=False)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise store.full() from exc
            raise
        self._file = io.FileIO(self._tmp.fd, "wb", closefd=False)
        self._digester = Digester()
        self.descriptor: Descriptor | None = None
        self._verified: Descriptor | None = None
        # told the blob's length after every write (a reader following the download)
        self.listener: Callable[[int], None] | None = None

    @property
    def tmp_path(self) -> Path:
        """The file in ``tmp/`` being written: what a reader following the download opens."""
        return self._tmp.path

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._digester.size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append a chunk; fails early once more than the announced size arrives."""
        self._digester.update(data)
        if self._expected_size is not None and self._digester.size > self._expected_size:
            raise SizeMismatch(self._expected_size, self._digester.size, self._what())
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

    def _what(self) -> str:
        return f"blob {self._expected_digest}" if self._expected_digest else "blob"

    def commit(self) -> Descriptor:
        """Verify, make durable and move into place; return the blob's descriptor."""
        self.verify()
        return self.publish(durable=True)

    def verify(self) -> Descriptor:
        """Check the size and digest of what was written; the blob stays in ``tmp/`` (see
        ``publish``). A mismatch discards it."""
        digest, size = self._digester.digest, self._digester.size
        try:
            if self._expected_size is not None and size != self._expected_size:
                raise SizeMismatch(self._expected_size, size, self._what())
            if self._expected_digest is not None and digest != self._expected_digest:
                raise DigestMismatch(self._expected_digest, digest, self._what())
        except BaseException:
            self._tmp.close(remove=True)
            raise
        self._verified = Descriptor(digest, size)
        return self._verified

    def publish(self, *, durable: bool) -> Descriptor:
        """Move the verified blob into ``blobs/``. With ``durable`` its bytes and the rename
        are flushed here; without, the caller has flushed the file system since the last
        write (one ``syncfs`` for a whole pull) and flushes the directory afterwards."""
        verified = self._verified
        if verified is None:
            raise RuntimeError("publish() before verify()")
        final = self._store.path(verified.digest)
        try:
            try:
                if durable:
                    os.fsync(self._tmp.fd)
                # Two writers of one digest hold identical verified bytes: the later rename
                # wins and readers of the earlier inode keep reading valid content.
                os.replace(self._tmp.path, final)
                if durable:
                    fsutil.fsync_dir(final.parent)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise self._store.full() from exc
                raise
        except BaseException:
            self._tmp.close(remove=True)
            raise
        self._tmp.close(remove=False)
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


class ContentStore:
    """Immutable blobs addressed by their sha256 digest."""

    def __init__(
        self, root: Path, tmp: Path, *, reserve: int = 0, free: Callable[[], int] | None = None
    ) -> None:
        self.root = root
        self.tmp = tmp
        self.reserve = reserve
        self._free = free or (lambda: fsutil.free_bytes(root))

    def check_free(self) -> None:
        """Raise StoreFull if the file system has less free space than the reserve."""
        if self.reserve > 0:
            free = self._free()
            if free < self.reserve:
                raise StoreFull(free, self.reserve)

    def full(self) -> StoreFull:
        """The error for a write the file system refused for want of space (ENOSPC)."""
        return StoreFull(self._free(), 0)

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
    """The whole layer store rooted at one directory.

    ``reserve`` is the free space writes leave on the store's file system (a StoreReserve, or
    bytes); none by default, where only a full disk stops a write. A store of an older layout
    is migrated when ``migrate`` is true and this process can write it, else refused with
    StoreLayoutError. ``snapshots`` puts the snapshots elsewhere than ``<root>/snapshots``
    (one host's cache beside a store whose blobs several hosts share).
    """

    def __init__(
        self,
        root: Path,
        whiteouts: str | None = None,
        *,
        reserve: StoreReserve | int = 0,
        migrate: bool = True,
        snapshots: Path | None = None,
    ) -> None:
        from .snapshots import SnapshotStore

        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.containers = self.root / "containers"
        _make_private_dirs(self.root)
        self.whiteouts: WhiteoutFormat = self._whiteout_format(whiteouts, migrate=migrate)
        if isinstance(reserve, StoreReserve):
            reserve = reserve.resolve(fsutil.total_bytes(self.root))
        self.reserve = reserve

        def free() -> int:
            return fsutil.free_bytes(self.root)

        self.blobs = ContentStore(
            self.root / "blobs" / "sha256", self.tmp, reserve=reserve, free=free
        )
        snapshot_root = self.root / "snapshots" if snapshots is None else Path(snapshots)
        if snapshot_root != self.root / "snapshots":
            # a host's own snapshot cache beside a shared store (same file system: snapshots
            # are renamed in from tmp/), private as every store directory
            snapshot_root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(snapshot_root, 0o700)
        self.snapshots = SnapshotStore(
            snapshot_root,
            tmp=self.tmp,
            locks=self.locks,
            whiteouts=self.whiteouts,
            reserve=reserve,
            free=free,
        )

    def free_bytes(self) -> int:
        """Free space on the store's file system, in bytes."""
        return fsutil.free_bytes(self.root)

    def _whiteout_format(self, requested: str | None, *, migrate: bool) -> WhiteoutFormat:
        meta = self.root / "store.json"
        if meta.exists():
            recorded = _read_meta(self.root, migrate=migrate)["whiteouts"]
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
            recorded = _read_meta(self.root, migrate=migrate)["whiteouts"]
            if requested is not None and requested != recorded:
                raise ValueError(
                    f"store {self.root} keeps whiteouts as {recorded!r}, not {requested!r}"
                ) from None
            return format_named(recorded)
        finally:
            tmp.unlink()
        return fmt

    def sweep_tmp(self) -> int:
        """Remove leftovers of crashed writes from ``tmp/``; return how many.

        Mounts left there are unmounted first, or left with their entry and logged (see
        ``sweep`` for the full report).
        """
        return self.sweep().removed

    def sweep(self) -> fsutil.SweepReport:
        """Sweep ``tmp/`` and say what was removed, unmounted and left alone."""
        return fsutil.sweep(self.tmp)

    def usage(self) -> StoreUsage:
        """Count and measure what the store holds (iteratively: trees can be thousands deep;
        a hardlinked inode counts once; symlinks are not followed, mounts not entered)."""
        blob_count = blob_bytes = 0
        for entry in os.scandir(self.blobs.root):
            blob_count += 1
            blob_bytes += entry.stat(follow_symlinks=False).st_size
        snapshot_count = snapshot_bytes = 0
        seen: set[tuple[int, int]] = set()
        for chain_id in self.snapshots.chain_ids():
            try:
                size = fsutil.tree_usage(self.snapshots.path(chain_id), seen=seen)[0]
            except FileNotFoundError:  # removed while we counted
                continue
            snapshot_count += 1
            snapshot_bytes += size
        container_count = sum(1 for _ in os.scandir(self.containers))
        return StoreUsage(blob_count, blob_bytes, snapshot_count, snapshot_bytes, container_count)


def _make_private_dirs(root: Path) -> None:
    """Make the store's directories 0700, and tighten any that are not (when they are ours)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    for rel in PRIVATE_DIRS:
        path = root / rel if rel else root
        with suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreLayoutError(f"{path} is not a directory")
        if st.st_mode & 0o077:
            # not ours to tighten (PermissionError): whoever owns the store opened it too wide
            with suppress(PermissionError):
                os.chmod(path, 0o700)


def _write_meta(root: Path, meta: dict[str, object]) -> None:
    """Replace store.json atomically and durably."""
    tmp = root / f"store.json.{os.getpid()}.{uuid.uuid4().hex}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(meta) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / "store.json")
    finally:
        tmp.unlink(missing_ok=True)
    fsutil.fsync_dir(root)


def _read_meta(root: Path, *, migrate: bool) -> dict[str, str]:
    """store.json of a store of the current layout, migrating an older one first if allowed."""
    meta = json.loads((root / "store.json").read_text())
    version = meta.get("version", 1)
    if version == STORE_VERSION and "migration" not in meta:
        return dict(meta)
    if not isinstance(version, int) or version > STORE_VERSION:
        raise StoreLayoutError(
            f"store {root} has layout version {version!r}, newer than this layerhub knows "
            f"({STORE_VERSION}): use the layerhub that made it"
        )
    if not migrate or not (os.access(root, os.W_OK) and os.access(root / "snapshots", os.W_OK)):
        raise StoreLayoutError(
            f"store {root} has layout version {version}; this layerhub needs version "
            f"{STORE_VERSION}: run `{MIGRATE_COMMAND}` as the store's owner to migrate it"
        )
    migrate_store(root)
    return dict(json.loads((root / "store.json").read_text()))


def migrate_store(root: Path) -> int:
    """Bring a store of layout version 1 to the current layout in place; return how many
    snapshots were moved (0 for a store already current).

    Version 1 kept each snapshot's tree at ``snapshots/<hex>/``. Every step is a rename or a
    mkdir, and store.json says how far it got, so a migration stopped at any point (a crash, a
    kill) is finished by the next call and nothing is moved twice:

    1. ``snapshots.migrating/`` is made, then store.json records ``"migration": 2``.
    2. Each ``snapshots/<hex>`` is renamed to ``snapshots.migrating/<hex>/fs``: the first
       holds only trees not yet moved, the second only trees moved, whatever the interruption.
    3. ``snapshots.migrating`` is renamed over the then empty ``snapshots``: once it is gone,
       every tree has moved (it was made before step 1 was recorded).
    4. store.json records version 2.
    """
    root = Path(root)
    snapshots = root / "snapshots"
    staging = root / "snapshots.migrating"
    moved = 0
    with fsutil.file_lock(root / "locks" / "store-migrate.lock"):
        meta = json.loads((root / "store.json").read_text())
        if meta.get("version", 1) == STORE_VERSION and "migration" not in meta:
            return 0
        if meta.get("version", 1) != 1:
            raise StoreLayoutError(f"store {root}: no migration from layout {meta['version']!r}")
        if "migration" not in meta:
            staging.mkdir(mode=0o700, exist_ok=True)
            fsutil.fsync_dir(root)
            meta["migration"] = STORE_VERSION
            _write_meta(root, meta)
        if staging.is_dir():
            for entry in os.scandir(snapshots):
                outer = staging / entry.name
                outer.mkdir(mode=0o700, exist_ok=True)
                os.rename(entry.path, outer / "fs")
                moved += 1
            fsutil.fsync_dir(staging)
            fsutil.fsync_dir(snapshots)
            os.rename(staging, snapshots)  # replaces the empty directory in one step
            fsutil.fsync_dir(root)
        del meta["migration"]
        meta["version"] = STORE_VERSION
        _write_meta(root, meta)
    _make_private_dirs(root)
    return moved
