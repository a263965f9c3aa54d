"""Snapshots: each layer unpacked once, keyed by its ChainID, shared by every image above it.

```
snapshots/<chainid-hex>/      0700, made by the store: never given a mode by a layer
snapshots/<chainid-hex>/fs/   the layer's tree; the layer's ``./`` entry sets this one's mode
```
The tree sits one level below a directory the store owns, so a layer whose root is 0755 (as
nearly all are) does not open its setuid binaries and device nodes to every local user.

A snapshot is built as ``tmp/unpack-xxx/fs`` and ``tmp/unpack-xxx`` is renamed into
``snapshots/<chainid-hex>`` only once it is complete (and, by default, flushed to disk): a
crash or a refused tar leaves no half snapshot. A per-ChainID lock makes two workers unpacking
the same layer do the work once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import fsutil
from .apply import ApplyLimits, ApplyResult, apply_layer
from .digest import digest_hex
from .errors import DISK_FULL, DigestMismatch, SnapshotNotFound, StoreFull
from .whiteouts import WhiteoutFormat


@dataclass(frozen=True)
class SnapshotResult:
    """A snapshot's path, and what unpacking found (None when it already existed)."""

    path: Path
    applied: ApplyResult | None

    @property
    def created(self) -> bool:
        """Whether this call did the unpacking."""
        return self.applied is not None


TREE = "fs"


class SnapshotStore:
    """``snapshots/<chainid-hex>/fs`` trees, each holding one layer's own changes."""

    def __init__(
        self,
        root: Path,
        *,
        tmp: Path,
        locks: Path,
        whiteouts: WhiteoutFormat,
        reserve: int = 0,
        free: Callable[[], int] | None = None,
    ) -> None:
        self.root = root
        self.tmp = tmp
        self.locks = locks
        self.whiteouts = whiteouts
        self.reserve = reserve
        self._free = free or (lambda: fsutil.free_bytes(root))

    def path(self, chain_id: str) -> Path:
        """Where the tree of the snapshot for ``chain_id`` lives (whether or not it is there):
        what a union view, a container or an overlay mount uses as the layer's root."""
        return self.outer(chain_id) / TREE

    def outer(self, chain_id: str) -> Path:
        """The store-owned directory holding the snapshot's tree (what is renamed and removed)."""
        return self.root / digest_hex(chain_id)

    def exists(self, chain_id: str) -> bool:
        """Whether the snapshot is there."""
        return self.path(chain_id).is_dir()

    def get(self, chain_id: str) -> Path:
        """The snapshot's path; raises SnapshotNotFound if it was never unpacked."""
        path = self.path(chain_id)
        if not path.is_dir():
            raise SnapshotNotFound(f"no snapshot for {chain_id}")
        return path

    def chain_ids(self) -> list[str]:
        """Every snapshot held."""
        return [
            f"sha256:{entry.name}"
            for entry in self.root.iterdir()
            if _is_hex(entry.name) and (entry / TREE).is_dir()
        ]

    def check_free(self) -> None:
        """Raise StoreFull if the store's file system has less free space than the reserve."""
        if self.reserve > 0:
            free = self._free()
            if free < self.reserve:
                raise StoreFull(free, self.reserve)

    def build(
        self, chain_id: str, fill: Callable[[Path], ApplyResult], *, durable: bool = True
    ) -> SnapshotResult:
        """Create the snapshot by calling ``fill`` on an empty directory, unless it exists.

        Running out of space anywhere on the way (ENOSPC, EDQUOT) is StoreFull, and nothing of
        the snapshot is kept.
        """
        outer = self.outer(chain_id)
        tree = outer / TREE
        with fsutil.file_lock(self.locks / f"snapshot-{outer.name}.lock"):
            if tree.is_dir():
                return SnapshotResult(tree, None)
            self.check_free()
            # mkdtemp makes it 0700, and it keeps that mode once renamed into snapshots/
            try:
                work = fsutil.TempEntry(self.tmp, "unpack-", directory=True)
            except OSError as exc:
                if exc.errno in DISK_FULL:
                    raise StoreFull(self._free(), 0) from exc
                raise
            try:
                try:
                    os.mkdir(work.path / TREE, 0o700)
                    result = fill(work.path / TREE)
                    if durable:
                        fsutil.syncfs(work.path)
                    os.rename(work.path, outer)
                    if durable:
                        fsutil.fsync_dir(self.root)
                except OSError as exc:
                    if exc.errno in DISK_FULL:
                        # out of blocks or inodes whatever the reserve said: say so as such
                        raise StoreFull(self._free(), 0) from exc
                    raise
            except BaseException:
                work.close(remove=True)
                raise
            work.close(remove=False)
            return SnapshotResult(tree, result)

    def unpack(
        self,
        chain_id: str,
        stream: BinaryIO,
        *,
        diff_id: str | None = None,
        limits: ApplyLimits | None = None,
        durable: bool = True,
    ) -> SnapshotResult:
        """Unpack a layer (tar, gzip or zstd) as the snapshot ``chain_id``.

        With ``diff_id`` given, the uncompressed tar must hash to it, or nothing is kept.
        """

        limits = self.limits_for(limits)

        def fill(directory: Path) -> ApplyResult:
            result = apply_layer(stream, directory, whiteouts=self.whiteouts, limits=limits)
            if diff_id is not None and result.diff_id != diff_id:
                raise DigestMismatch(diff_id, result.diff_id, "layer DiffID")
            return result

        return self.build(chain_id, fill, durable=durable)

    def stage(self) -> StagedSnapshot:
        """An empty tree in ``tmp/`` to fill, to be published (or discarded) later: for
        pulls that unpack many layers and flush the store once before publishing them all."""
        try:
            work = fsutil.TempEntry(self.tmp, "unpack-", directory=True)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise StoreFull(self._free(), 0) from exc
            raise
        try:
            os.mkdir(work.path / TREE, 0o700)
        except BaseException as exc:
            work.close(remove=True)
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise StoreFull(self._free(), 0) from exc
            raise
        return StagedSnapshot(self, work)

    def limits_for(self, limits: ApplyLimits | None = None) -> ApplyLimits:
        """``limits`` (the defaults if None) with the store's free-space reserve."""
        limits = limits or ApplyLimits()
        if self.reserve > limits.min_free:
            limits = dataclasses.replace(limits, min_free=self.reserve)
        return limits

    def remove(self, chain_id: str, *, keep: Callable[[], bool] | None = None) -> bool:
        """Delete a snapshot: renamed out of sight first, so no reader sees it half-deleted.

        ``keep``, if given, is asked under the snapshot's lock: True leaves the snapshot."""
        final = self.outer(chain_id)
        with fsutil.file_lock(self.locks / f"snapshot-{final.name}.lock"):
            if not final.is_dir() or (keep is not None and keep()):
                return False
            doomed = fsutil.TempEntry(self.tmp, "remove-", directory=True)
            try:
                os.rename(final, doomed.path / "snapshot")
            finally:
                doomed.close(remove=True)
            return True


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class StagedSnapshot:
    """A layer's tree being unpacked in ``tmp/``, published as a snapshot once the caller has
    verified it (its blob's digest and its DiffID) and flushed the store."""

    def __init__(self, snapshots: SnapshotStore, work: fsutil.TempEntry) -> None:
        self._snapshots = snapshots
        self._work = work
        self.tree = work.path / TREE

    def publish(self, chain_id: str) -> bool:
        """Rename the tree into place as ``chain_id``'s snapshot; False (and the tree
        discarded) if the snapshot is there already. The caller holds the snapshot's lock,
        has flushed the file system since the tree was written, and flushes ``snapshots/``
        afterwards."""
        outer = self._snapshots.outer(chain_id)
        if (outer / TREE).is_dir():
            self.discard()
            return False
        try:
            os.rename(self._work.path, outer)
        except BaseException as exc:
            self.discard()
            if isinstance(exc, OSError) and exc.errno in DISK_FULL:
                raise StoreFull(self._snapshots._free(), 0) from exc
            raise
        self._work.close(remove=False)
        return True

    def discard(self) -> None:
        """Remove the tree (nothing of it is kept)."""
        self._work.close(remove=True)
