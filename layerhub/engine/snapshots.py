"""Snapshots: each layer unpacked once, keyed by its ChainID, shared by every image above it.

A snapshot is created in ``tmp/`` and renamed into ``snapshots/<chainid-hex>/`` only once it is
complete (and, by default, flushed to disk): a crash or a refused tar leaves no half snapshot.
A per-ChainID lock makes two workers unpacking the same layer do the work once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import fsutil
from .apply import ApplyLimits, ApplyResult, apply_layer
from .digest import digest_hex
from .errors import DigestMismatch, SnapshotNotFound
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


class SnapshotStore:
    """``snapshots/<chainid-hex>/`` directories, each holding one layer's own changes."""

    def __init__(self, root: Path, *, tmp: Path, locks: Path, whiteouts: WhiteoutFormat) -> None:
        self.root = root
        self.tmp = tmp
        self.locks = locks
        self.whiteouts = whiteouts

    def path(self, chain_id: str) -> Path:
        """Where the snapshot for ``chain_id`` lives (whether or not it is there)."""
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
        return [f"sha256:{entry.name}" for entry in self.root.iterdir()]

    def build(
        self, chain_id: str, fill: Callable[[Path], ApplyResult], *, durable: bool = True
    ) -> SnapshotResult:
        """Create the snapshot by calling ``fill`` on an empty directory, unless it exists."""
        final = self.path(chain_id)
        with fsutil.file_lock(self.locks / f"snapshot-{final.name}.lock"):
            if final.is_dir():
                return SnapshotResult(final, None)
            work = fsutil.TempEntry(self.tmp, "unpack-", directory=True)
            try:
                result = fill(work.path)
                if durable:
                    fsutil.syncfs(work.path)
                os.rename(work.path, final)
                if durable:
                    fsutil.fsync_dir(self.root)
            except BaseException:
                work.close(remove=True)
                raise
            work.close(remove=False)
            return SnapshotResult(final, result)

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

        def fill(directory: Path) -> ApplyResult:
            result = apply_layer(stream, directory, whiteouts=self.whiteouts, limits=limits)
            if diff_id is not None and result.diff_id != diff_id:
                raise DigestMismatch(diff_id, result.diff_id, "layer DiffID")
            return result

        return self.build(chain_id, fill, durable=durable)

    def remove(self, chain_id: str, *, keep: Callable[[], bool] | None = None) -> bool:
        """Delete a snapshot: renamed out of sight first, so no reader sees it half-deleted.

        ``keep``, if given, is asked under the snapshot's lock: True leaves the snapshot."""
        final = self.path(chain_id)
        with fsutil.file_lock(self.locks / f"snapshot-{final.name}.lock"):
            if not final.is_dir() or (keep is not None and keep()):
                return False
            doomed = fsutil.TempEntry(self.tmp, "remove-", directory=True)
            try:
                os.rename(final, doomed.path / "snapshot")
            finally:
                doomed.close(remove=True)
            return True
