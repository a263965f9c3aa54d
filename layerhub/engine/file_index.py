"""A layer's file index: one record per entry of the layer's own changes.

What a layer tar says, as the snapshot keeps it: each path the layer adds or changes (with its
type, mode, owner, size, link target and, for a regular file, the sha256 of its content), each
path it deletes (a whiteout) and each directory it makes opaque. Paths are relative to the
layer's root, without a leading slash (``usr/lib/x86_64-linux-gnu/libssl.so.3``), in the order
the layer's tree is walked.

A hardlink is its own kind (``h``): its ``link`` is the path, in the same layer, of the file
it shares content with, and its size and sha256 are that file's, so a search by content finds
every name. An opaque directory gives two records: the directory (``d``) and the marker
(``o``) at the same path.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .whiteouts import WhiteoutFormat

FILE = "f"
DIRECTORY = "d"
SYMLINK = "l"
HARDLINK = "h"
CHAR = "c"
BLOCK = "b"
FIFO = "p"
WHITEOUT = "w"  # the path is deleted by this layer
OPAQUE = "o"  # the directory at the path hides the lower layers' children
KINDS = frozenset({FILE, DIRECTORY, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO, WHITEOUT, OPAQUE})
# kinds whose bytes are content (what wasted-space and duplicate figures count)
CONTENT_KINDS = frozenset({FILE, HARDLINK})

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One entry of a layer's own changes."""

    path: str
    kind: str
    mode: int = 0  # permission bits (stat.S_IMODE), 0 for whiteouts and opaque markers
    uid: int = 0
    gid: int = 0
    size: int = 0  # content bytes of a regular file (or a hardlink's file); 0 otherwise
    sha256: bytes | None = None  # 32 raw bytes for a regular file or hardlink; None otherwise
    link: str = ""  # a symlink's target, or the path a hardlink shares its file with

    @property
    def name(self) -> str:
        """The last component of the path."""
        return self.path.rpartition("/")[2]


def hash_file(path: str) -> bytes:
    """The sha256 of a file's content (opened without following a symlink)."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(fd, _HASH_CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.digest()


def walk_snapshot(tree: Path, whiteouts: WhiteoutFormat) -> Iterator[FileRecord]:
    """The records of a snapshot already on disk (for snapshots made before indexing, and to
    check an index against its snapshot): a second walk that reads every regular file."""
    seen: dict[tuple[int, int], tuple[str, int, bytes]] = {}  # (dev, ino) -> first path
    stack = [""]
    while stack:
        rel = stack.pop()
        directory = f"{tree}/{rel}" if rel else str(tree)
        if rel and whiteouts.is_opaque(directory):
            yield FileRecord(rel, OPAQUE)
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        below: list[str] = []
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            path = f"{rel}/{entry.name}" if rel else entry.name
            target = whiteouts.whiteout_target(entry.name, st)
            if target is not None:
                yield FileRecord(f"{rel}/{target}" if rel else target, WHITEOUT)
                continue
            if whiteouts.is_marker(entry.name):
                continue
            mode = stat.S_IMODE(st.st_mode)
            uid, gid = st.st_uid, st.st_gid
            if stat.S_ISDIR(st.st_mode):
                yield FileRecord(path, DIRECTORY, mode, uid, gid)
                below.append(path)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                first = seen.get(key) if st.st_nlink > 1 else None
                if first is not None:
                    yield FileRecord(
                        path,
                        HARDLINK,
                        mode,
                        uid,
                        gid,
                        size=first[1],
                        sha256=first[2],
                        link=first[0],
                    )
                    continue
                digest = hash_file(entry.path)
                if st.st_nlink > 1:
                    seen[key] = (path, st.st_size, digest)
                yield FileRecord(path, FILE, mode, uid, gid, size=st.st_size, sha256=digest)
            elif stat.S_ISLNK(st.st_mode):
                yield FileRecord(path, SYMLINK, mode, uid, gid, link=os.readlink(entry.path))
            elif stat.S_ISCHR(st.st_mode):
                yield FileRecord(path, CHAR, mode, uid, gid)
            elif stat.S_ISBLK(st.st_mode):
                yield FileRecord(path, BLOCK, mode, uid, gid)
            elif stat.S_ISFIFO(st.st_mode):
                yield FileRecord(path, FIFO, mode, uid, gid)
        stack.extend(reversed(below))
