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
import marshal
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .whiteouts import OPAQUE_MARKER, WhiteoutFormat

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


# -- the index built while a layer is applied ----------------------------------------------------


class TreeNode:
    """One directory entry of a snapshot being unpacked, as the unpack wrote it. A hardlinked
    name shares the node of the name it links to (the node is the inode)."""

    __slots__ = ("fmt", "gid", "kind", "link", "mode", "rdev", "sha256", "size", "uid")

    def __init__(
        self,
        fmt: int,
        mode: int,
        uid: int,
        gid: int,
        *,
        size: int = 0,
        sha256: bytes | None = None,
        link: str = "",
        rdev: int = 0,
    ) -> None:
        self.fmt = fmt  # stat.S_IFMT
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.sha256 = sha256
        self.link = link
        self.rdev = rdev

    def stat(self) -> os.stat_result:
        """What ``lstat`` would say about the entry, as far as a whiteout format asks."""
        return os.stat_result(
            (self.fmt | self.mode, 0, 0, 1, self.uid, self.gid, self.size, 0, 0, 0),
            {"st_rdev": self.rdev},
        )


_KIND_OF_FORMAT = {
    stat.S_IFDIR: DIRECTORY,
    stat.S_IFREG: FILE,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFCHR: CHAR,
    stat.S_IFBLK: BLOCK,
    stat.S_IFIFO: FIFO,
}


class IndexTree:
    """The snapshot's tree as an unpack writes it, kept in memory beside the real one.

    ``apply_layer`` tells it every change it makes on disk (what it creates, replaces or
    removes, whiteouts and opaque markers in the store's form) and the sha256 of each regular
    file's content as the bytes pass through; ``records`` then gives what ``walk_snapshot``
    would give for the finished snapshot, without a second walk: a path replaced later in the
    tar appears once, in its final state, and a path removed not at all.
    """

    def __init__(self, whiteouts: WhiteoutFormat, owner: tuple[int, int]) -> None:
        self.fmt = whiteouts
        self.owner = owner
        # directory (relative path, "" for the root) -> its entries by on-disk name
        self.dirs: dict[str, dict[str, TreeNode]] = {"": {}}
        self.opaque: set[str] = set()  # directories given the overlay opaque xattr
        self._markers = whiteouts.is_marker(OPAQUE_MARKER)  # opaque is a file in the dir

    @staticmethod
    def _split(rel: str) -> tuple[str, str]:
        parent, _, name = rel.rpartition("/")
        return parent, name

    def add(self, rel: str, node: TreeNode) -> None:
        """``rel`` now holds ``node`` (what was there was removed first, with ``remove``)."""
        parent, name = self._split(rel)
        self.dirs[parent][name] = node
        if node.fmt == stat.S_IFDIR:
            self.dirs[rel] = {}

    def mkdir(self, rel: str, mode: int, uid: int, gid: int) -> None:
        """A directory was created at ``rel``."""
        self.add(rel, TreeNode(stat.S_IFDIR, mode, uid, gid))

    def remove(self, rel: str) -> None:
        """Whatever is at ``rel`` (a directory with everything below it) was removed."""
        parent, name = self._split(rel)
        siblings = self.dirs.get(parent)
        if siblings is None or siblings.pop(name, None) is None:
            return
        doomed = [rel]
        while doomed:
            gone = doomed.pop()
            self.opaque.discard(gone)
            children = self.dirs.pop(gone, None)
            if children:
                doomed.extend(
                    f"{gone}/{n}" for n, child in children.items() if child.fmt == stat.S_IFDIR
                )

    def node(self, rel: str) -> TreeNode | None:
        """What is at ``rel``, if anything."""
        parent, name = self._split(rel)
        siblings = self.dirs.get(parent)
        return None if siblings is None else siblings.get(name)

    def hardlink(self, rel: str, target: str) -> None:
        """``rel`` was made a hardlink to the entry at ``target`` (its node is shared)."""
        node = self.node(target)
        if node is not None:
            self.add(rel, node)

    def mark_opaque(self, rel: str) -> None:
        """The store's opaque marker was written for the directory ``rel``."""
        if self._markers:
            self.add(f"{rel}/{OPAQUE_MARKER}" if rel else OPAQUE_MARKER, self._marker())
        else:
            self.opaque.add(rel)

    def whiteout(self, parent: str, name: str) -> None:
        """``parent/name`` was deleted with a whiteout in the store's form."""
        self.remove(f"{parent}/{name}" if parent else name)
        disk = self.fmt.whiteout_entry(name)
        rel = f"{parent}/{disk}" if parent else disk
        if self.node(rel) is None:
            self.add(rel, self._marker() if self._markers else TreeNode(stat.S_IFCHR, 0o600, 0, 0))

    def _marker(self) -> TreeNode:
        return TreeNode(stat.S_IFREG, 0o644, *self.owner)

    def records(self, dir_modes: dict[str, tuple[int, int, int]]) -> list[FileRecord]:
        """The snapshot's records in ``walk_snapshot``'s order. ``dir_modes`` gives the final
        mode and owner of the directories the layer names (set once the unpack ends)."""
        out: list[FileRecord] = []
        append = out.append
        seen: dict[int, tuple[str, TreeNode]] = {}
        links: dict[int, int] = {}
        for children in self.dirs.values():
            for node in children.values():
                if node.fmt == stat.S_IFREG:
                    links[id(node)] = links.get(id(node), 0) + 1
        whiteout_target = self.fmt.whiteout_target
        is_marker = self.fmt.is_marker
        # a whiteout format asks an entry's type, mode and device only: one stat per kind
        stats: dict[tuple[int, int, int], os.stat_result] = {}
        stack = [""]
        while stack:
            rel = stack.pop()
            children = self.dirs[rel]
            if rel and (rel in self.opaque or (self._markers and OPAQUE_MARKER in children)):
                append(FileRecord(rel, OPAQUE))
            below: list[str] = []
            for name in sorted(children):
                node = children[name]
                path = f"{rel}/{name}" if rel else name
                key = (node.fmt, node.mode, node.rdev)
                st = stats.get(key)
                if st is None:
                    st = stats[key] = node.stat()
                target = whiteout_target(name, st)
                if target is not None:
                    append(FileRecord(f"{rel}/{target}" if rel else target, WHITEOUT))
                    continue
                if is_marker(name):
                    continue
                fmt = node.fmt
                if fmt == stat.S_IFDIR:
                    mode, uid, gid = dir_modes.get(path, (node.mode, node.uid, node.gid))
                    append(FileRecord(path, DIRECTORY, mode, uid, gid))
                    below.append(path)
                elif fmt == stat.S_IFREG:
                    first = seen.get(id(node))
                    if first is not None:
                        append(
                            FileRecord(
                                path,
                                HARDLINK,
                                node.mode,
                                node.uid,
                                node.gid,
                                node.size,
                                node.sha256,
                                first[0],
                            )
                        )
                        continue
                    if links[id(node)] > 1:
                        seen[id(node)] = (path, node)
                    append(
                        FileRecord(
                            path, FILE, node.mode, node.uid, node.gid, node.size, node.sha256
                        )
                    )
                else:
                    kind = _KIND_OF_FORMAT[fmt]
                    append(FileRecord(path, kind, node.mode, node.uid, node.gid, link=node.link))
            stack.extend(reversed(below))
        return out


# -- records on the way from an unpacker process to the catalog ---------------------------------


def write_records(path: Path, records: Iterable[FileRecord]) -> None:
    """Write records to ``path``, for ``read_records`` in another process of this same
    interpreter (an unpacker's answer to its parent): marshal's form of plain tuples, which
    both ends turn out and back many times faster than JSON."""
    rows = [(r.path, r.kind, r.mode, r.uid, r.gid, r.size, r.sha256, r.link) for r in records]
    with open(path, "wb") as f:
        marshal.dump(rows, f)


def read_records(path: Path) -> list[FileRecord]:
    """The records ``write_records`` wrote."""
    with open(path, "rb") as f:
        # loads() of the whole file: load() of a file object reads it a few bytes at a
        # time through Python calls, ten times slower (30 ms for a 7,000-file layer)
        rows = marshal.loads(f.read())
    return [FileRecord(*row) for row in rows]
