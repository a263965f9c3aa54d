"""Layer diff: turn a container's writable directory into a layer tar.

The writable directory holds only what the container changed (copy-up, as overlayfs' upper
directory does), so the diff reads that directory alone and its cost grows with the size of the
change, not of the image. Deletions become ``.wh.<name>`` entries and opaque directories a
``.wh..wh..opq`` entry right after the directory, whichever form the directory keeps them in.

The tar is deterministic: entries sorted by name at each level, parents first; headers
normalized (no user or group names, integer mtimes, no access or change times, xattrs in sorted
order); gzip with no name and a zero timestamp. The same changes give the same digests.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from .digest import Digester
from .store import BlobStore
from .whiteouts import OPAQUE_MARKER, OVERLAY_XATTR_PREFIXES, WHITEOUT_PREFIX, WhiteoutFormat

XATTR_PAX_PREFIX = "SCHILY.xattr."
DEFAULT_COMPRESSLEVEL = 6


@dataclass(frozen=True)
class LayerDiff:
    """A layer produced from a writable directory."""

    digest: str  # of the gzip blob: the manifest's layer digest
    size: int  # compressed bytes
    diff_id: str  # of the uncompressed tar: the config's rootfs entry
    tar_size: int  # uncompressed bytes
    entry_count: int  # entries written, whiteouts included


class _Sink(Protocol):
    def write(self, data: bytes) -> int: ...


class _HashingWriter:
    """Hashes and counts what passes through to ``inner``."""

    def __init__(self, inner: _Sink) -> None:
        self._inner = inner
        self.digester = Digester()

    def write(self, data: bytes) -> int:
        self.digester.update(data)
        self._inner.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing is buffered here."""


@dataclass(frozen=True)
class _Item:
    name: str  # tar name
    path: Path | None  # None for a synthesized marker
    st: os.stat_result | None


def _scan(upper: Path, fmt: WhiteoutFormat) -> Iterator[_Item]:
    """The entries of the writable directory in tar order, markers as OCI names."""

    def level(directory: Path, prefix: str) -> list[_Item]:
        items: list[_Item] = []
        for entry in os.scandir(directory):
            st = entry.stat(follow_symlinks=False)
            target = fmt.whiteout_target(entry.name, st)
            if target is not None:
                items.append(_Item(prefix + WHITEOUT_PREFIX + target, None, None))
            elif stat.S_ISSOCK(st.st_mode):
                continue  # a socket lives only while its process does; Docker skips them too
            elif not fmt.is_marker(entry.name):
                items.append(_Item(prefix + entry.name, Path(entry.path), st))
        items.sort(key=lambda i: i.name.encode("utf-8", "surrogateescape"))
        return items

    stack = [iter(level(upper, ""))]
    while stack:
        try:
            item = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        yield item
        if item.path is not None and item.st is not None and stat.S_ISDIR(item.st.st_mode):
            if fmt.is_opaque(item.path):
                yield _Item(f"{item.name}/{OPAQUE_MARKER}", None, None)
            stack.append(iter(level(item.path, item.name + "/")))


def _xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for name in sorted(names):
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        out[XATTR_PAX_PREFIX + name] = value.decode("utf-8", "surrogateescape")
    return out


def _header(item: _Item, clamp_mtime: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(item.name)
    info.uname = info.gname = ""
    if item.st is None or item.path is None:  # a whiteout or opaque marker
        info.type = tarfile.REGTYPE
        info.mode = 0o644
        info.mtime = 0
        return info
    st = item.st
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    mtime = int(st.st_mtime)
    info.mtime = min(mtime, clamp_mtime) if clamp_mtime is not None else mtime
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        info.type = tarfile.DIRTYPE
        info.name = item.name + "/"
    elif stat.S_ISREG(mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    elif stat.S_ISLNK(mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(item.path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(mode):
        info.type = tarfile.FIFOTYPE
    else:
        raise ValueError(f"{item.path}: sockets cannot be stored in a layer")
    info.pax_headers = _xattrs(item.path)
    return info


def write_diff_tar(
    upper: Path, fmt: WhiteoutFormat, out: BinaryIO | _Sink, *, clamp_mtime: int | None = None
) -> int:
    """Write the uncompressed layer tar of ``upper`` to ``out``; return the entry count."""
    count = 0
    first_path: dict[tuple[int, int], str] = {}
    with tarfile.open(  # type: ignore[call-overload]
        fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=1 << 20
    ) as tf:
        for item in _scan(upper, fmt):
            info = _header(item, clamp_mtime)
            count += 1
            st = item.st
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in first_path:
                    info.type = tarfile.LNKTYPE
                    info.linkname = first_path[key]
                    info.size = 0
                    tf.addfile(info)
                    continue
                first_path[key] = item.name
            if info.type == tarfile.REGTYPE and item.path is not None:
                with open(item.path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    return count


def diff_to_store(
    upper: Path,
    fmt: WhiteoutFormat,
    blobs: BlobStore,
    *,
    clamp_mtime: int | None = None,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> LayerDiff:
    """Write the gzip layer of ``upper`` into the content store and describe it."""
    with blobs.writer() as blob:
        compressed = _HashingWriter(blob)
        with gzip.GzipFile(
            filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=compresslevel
        ) as gz:
            plain = _HashingWriter(gz)
            count = write_diff_tar(upper, fmt, plain, clamp_mtime=clamp_mtime)
        desc = blob.commit()
    return LayerDiff(
        digest=desc.digest,
        size=desc.size,
        diff_id=plain.digester.digest,
        tar_size=plain.digester.size,
        entry_count=count,
    )
