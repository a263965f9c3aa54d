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

Blobs live behind the blob-store interface (``blobstore/``): in ``blobs/`` here by default, or
in an S3 bucket shared by several hosts, when this directory keeps only the host's snapshots,
containers, tmp/ and locks. Either way a blob is written into ``tmp/``, hashed while written,
checked against the digest and size it was announced with, and only then published: a reader
never sees a partial blob, and a mismatch leaves nothing behind.

Layout versions: 1 kept a snapshot's tree at ``snapshots/<hex>/`` itself, so a layer's ``./``
mode opened it to everyone; 2 adds the store-owned ``snapshots/<hex>/`` above ``fs/``. A
version 1 store is migrated in place when opened by a process that can write it
(``migrate_store``), by renames only, resumably.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from . import fsutil

# the blob store (blobstore/): its interface, its writer and the local driver, by the names
# the rest of the engine has always imported from here
from .blobstore import LOCAL, BlobsLocation, open_blob_store
from .blobstore.base import BlobSink as BlobSink
from .blobstore.base import BlobStore as BlobStore
from .blobstore.base import BlobWriter as BlobWriter
from .blobstore.base import Descriptor as Descriptor
from .blobstore.local import LocalBlobs as LocalBlobs
from .errors import StoreLayoutError
from .reserve import DEFAULT_RESERVE as DEFAULT_RESERVE
from .reserve import StoreReserve as StoreReserve
from .whiteouts import WhiteoutFormat, default_format, format_named

STORE_VERSION = 2
# what the refusal to open an old store tells people to run
MIGRATE_COMMAND = "python manage.py store_migrate"
# every directory of the store, made 0700 and kept so
PRIVATE_DIRS = ("", "blobs", "blobs/sha256", "snapshots", "containers", "tmp", "locks")


@dataclass(frozen=True)
class StoreUsage:
    """What the store holds on disk, measured (never estimated)."""

    blob_count: int
    blob_bytes: int
    snapshot_count: int
    snapshot_bytes: int
    container_count: int


class Store:
    """The whole layer store rooted at one directory.

    ``reserve`` is the free space writes leave on the store's file system (a StoreReserve, or
    bytes); none by default, where only a full disk stops a write. A store of an older layout
    is migrated when ``migrate`` is true and this process can write it, else refused with
    StoreLayoutError. ``blobs`` says where blobs live (``blobs/`` here by default; see
    ``blobstore.parse_blobs_url``), or is a blob store already opened. ``snapshots`` puts the
    snapshots elsewhere than ``<root>/snapshots`` (one host's cache beside a store whose blobs
    several hosts share).
    """

    def __init__(
        self,
        root: Path,
        whiteouts: str | None = None,
        *,
        reserve: StoreReserve | int = 0,
        migrate: bool = True,
        blobs: BlobsLocation | BlobStore = LOCAL,
        snapshots: Path | None = None,
    ) -> None:
        from .snapshots import SnapshotStore

        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.containers = self.root / "containers"
        local = isinstance(blobs, BlobsLocation) and blobs.driver == "local"
        _make_private_dirs(self.root, blobs=local)
        self.whiteouts: WhiteoutFormat = self._whiteout_format(whiteouts, migrate=migrate)
        if isinstance(reserve, StoreReserve):
            reserve = reserve.resolve(fsutil.total_bytes(self.root))
        self.reserve = reserve

        def free() -> int:
            return fsutil.free_bytes(self.root)

        if isinstance(blobs, BlobsLocation):
            blobs = open_blob_store(blobs, self.root, self.tmp, reserve=reserve)
        blobs.reserve = reserve
        self.blobs: BlobStore = blobs
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
        for entry in self.blobs.list():
            blob_count += 1
            blob_bytes += entry.size
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


def _make_private_dirs(root: Path, *, blobs: bool = True) -> None:
    """Make the store's directories 0700, and tighten any that are not (when they are ours);
    ``blobs/`` only when blobs live here."""
    root.parent.mkdir(parents=True, exist_ok=True)
    for rel in PRIVATE_DIRS:
        if not blobs and rel.startswith("blobs") and not (root / rel).exists():
            continue
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
    _make_private_dirs(root, blobs=(root / "blobs").exists())
    return moved
