"""The local driver: blobs as files in ``<store>/blobs/sha256/<hex>``."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .. import fsutil
from ..digest import digest_hex
from ..errors import DISK_FULL, BlobNotFound
from .base import BlobEntry, BlobStore, Descriptor

_HEX = re.compile(r"[a-f0-9]{64}")


class LocalBlobs(BlobStore):
    """Blobs as files in one directory of the layer store (``root``)."""

    def __init__(
        self, root: Path, tmp: Path, *, reserve: int = 0, free: Callable[[], int] | None = None
    ) -> None:
        super().__init__(tmp, reserve=reserve, free=free or (lambda: fsutil.free_bytes(root)))
        self.root = root

    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it is there)."""
        return self.root / digest_hex(digest)

    def local_path(self, digest: str) -> Path | None:
        return self.path(digest)

    def where(self, name: str = "") -> str:
        return f"blobs/sha256/{name}" if name else str(self.root)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the store") from None

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is not in the store") from None

    def publish(self, path: Path, fd: int, blob: Descriptor, *, durable: bool) -> None:
        final = self.path(blob.digest)
        try:
            if durable:
                os.fsync(fd)
            # Two writers of one digest hold identical verified bytes: the later rename
            # wins and readers of the earlier inode keep reading valid content.
            os.replace(path, final)
            if durable:
                fsutil.fsync_dir(final.parent)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise self.full() from exc
            raise

    def flush(self) -> None:
        fsutil.fsync_dir(self.root)

    def delete(self, digest: str) -> bool:
        try:
            self.path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def list(self) -> Iterator[BlobEntry]:
        with os.scandir(self.root) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted while listed
                    continue
                blob = _HEX.fullmatch(entry.name) and stat.S_ISREG(st.st_mode)
                digest = f"sha256:{entry.name}" if blob else None
                yield BlobEntry(entry.name, digest, st.st_size)
