"""Apply (unpack) one layer tar into an empty directory: that layer's own changes, nothing more.

The tar is read once, as a stream, in constant memory: decompressed if the bytes say so, hashed
on the way (its DiffID), and every entry is checked before anything is written:

- a path must stay inside the directory: no absolute names, no ``..`` climbing out, no write
  through a symlink that points outside (symlinks *inside* the layer are followed, as tar does);
- a hardlink must point at a file this layer already wrote;
- device nodes need privilege; FIFOs do not;
- entry count and byte limits stop tar bombs, including gzip bombs, and a free-space reserve
  stops the unpack before the store's file system fills up.

A path is resolved the way the kernel would at the moment the entry is written: what the layer
replaced earlier (a symlink swapped for another, a directory removed) is never looked through
again, and a symlink whose target does not exist is not silently turned into a directory.
Anything the file system refuses because of what an entry asks for (a name too long, an
invalid xattr) is a LayerError; running out of space is StoreFull.

New files, directories and symlinks are created by fswriter.py's writer, in a child process
for a large layer, while the next entries are read and checked; every check that looks at the
disk waits for it first.

Whiteouts are written in the store's form (see whiteouts.py). Ownership is applied when running
as root; modes, mtimes, symlinks, hardlinks and xattrs always (overlay xattrs never).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .compression import decompressed
from .digest import CHUNK
from .errors import (
    DISK_FULL,
    CorruptArchive,
    DeviceNotPermitted,
    HardlinkEscape,
    LayerError,
    LimitExceeded,
    PathTraversal,
    StoreFull,
    SymlinkEscape,
    UnsafeEntry,
)
from .file_index import FileRecord, IndexTree, TreeNode
from .fsutil import remove_path
from .fswriter import CLOSE, MKDIR, OPEN, SETXATTR, WRITE, FileWriter, WriteFailed
from .fswriter import SYMLINK as NEW_SYMLINK
from .tarstream import CHAR, DIRECTORY, FIFO, HARDLINK, REGULAR, SYMLINK, Header, TarReader
from .whiteouts import OPAQUE_MARKER, OVERLAY_XATTR_PREFIXES, WHITEOUT_PREFIX, WhiteoutFormat

MAX_SYMLINK_HOPS = 40
XATTR_PAX_PREFIX = "SCHILY.xattr."
# With a free-space reserve, the file system is asked again after about this many bytes: a
# zstd bomb of zeros overshoots the reserve by at most this (a file larger than what is free
# is refused before its first byte).
FREE_CHECK_BYTES = 8 << 20
ENTRY_COST = 4096  # what an entry may take on disk besides its contents (inode, block, dirent)
# errors the file system gives because of what an entry asks for, not because the host is broken
_ENTRY_ERRNOS = frozenset(
    {
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EILSEQ,
        errno.ELOOP,
        errno.EMLINK,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENOENT,
        errno.ENOTEMPTY,
        errno.ERANGE,
        errno.E2BIG,
        errno.EFBIG,
        errno.EOVERFLOW,
    }
)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True)
class ApplyLimits:
    """Guards against tar bombs. The defaults fit any real image layer."""

    max_entries: int = 2_000_000
    max_bytes: int = 128 * 2**30  # uncompressed tar stream, and file contents
    max_path: int = 4096
    # bytes that must stay free on the destination's file system while unpacking (0: no
    # reserve); below it the unpack stops with StoreFull
    min_free: int = 0


@dataclass(frozen=True)
class ApplyResult:
    """What applying a layer found."""

    diff_id: str  # sha256 of the uncompressed tar
    tar_size: int  # bytes of the uncompressed tar
    unpacked_size: int  # bytes of regular-file content written
    entry_count: int  # entries other than whiteouts
    file_count: int  # of those, the ones that are not directories
    compression: str  # gzip, zstd or none, as detected
    # the layer's file index (see file_index.py), in walk_snapshot's order; None when the
    # unpack was asked not to index
    files: tuple[FileRecord, ...] | None = None


class _Feeder(io.RawIOBase):
    """The uncompressed tar, decompressed and hashed (its DiffID) on a second thread.

    zlib, zstd and sha256 release the GIL on large buffers, so handing the unpacker 1 MiB
    chunks through a short queue lets decompression and hashing run beside tar parsing and
    file creation on another core, at the cost of a few hundred thread switches per GB.
    """

    def __init__(self, inner: BinaryIO, limit: int) -> None:
        self._inner = inner
        self._limit = limit
        self._hash = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=8)
        self._chunk = memoryview(b"")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layer-feeder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                data = self._inner.read(CHUNK)
                self._hash.update(data)
                self.size += len(data)
                if self.size > self._limit:
                    raise LimitExceeded(f"layer is larger than the limit of {self._limit} bytes")
                self._queue.put(data)
                if not data:
                    return
        except BaseException as exc:
            self._queue.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._chunk:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._queue.put(item)  # stay at end of stream for later reads
                return 0
            self._chunk = memoryview(item)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._chunk))
        view[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self) -> None:
        """Stop the thread, whether or not the stream was read to its end."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(0.01)
        super().close()

    @property
    def digest(self) -> str:
        return f"sha256:{self._hash.hexdigest()}"


def clean_name(name: str) -> list[str]:
    """The components of a tar entry's name, refusing any that escape the layer.

    ``./a/b`` and ``a//b/`` both give ``["a", "b"]``; ``.`` gives ``[]`` (the layer's root).
    """
    if name.startswith("/"):
        raise PathTraversal(name, "absolute path")
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise PathTraversal(name, "'..' climbs out of the layer")
            parts.pop()
        else:
            parts.append(comp)
    return parts


@dataclass
class _DirMeta:
    path: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int


_Key = tuple[str, ...]


class _Applier:
    def __init__(
        self,
        dest: str,
        tar: TarReader,
        whiteouts: WhiteoutFormat,
        limits: ApplyLimits,
        privileged: bool,
        out: FileWriter,
        index: bool = True,
    ) -> None:
        self.dest = dest
        # Calls that create something new go through ``out``, which makes them in a child
        # process once the layer is large enough (fswriter.py); every check of the disk's
        # state waits for them first (``out.sync()``). Whether a path may exist
        # is known without asking the disk: in a directory that started empty, only what this
        # layer created can be there. ``created`` holds the hash of every path it created
        # (whatever was removed since): a hit, true or a collision, takes the careful way.
        self.out = out
        with os.scandir(dest) as listing:
            self.fresh = next(listing, None) is None
        self.created: set[int] = set()
        self.tar = tar
        self.fmt = whiteouts
        self.limits = limits
        self.privileged = privileged
        # as-written directory path -> real path relative to dest, for directories verified to
        # be real directories inside dest. Each resolution extends its parent's by one
        # component; ``lookups`` names, for each real path, the resolutions that looked at it,
        # so replacing or removing that path drops exactly those (and what was built on them).
        # Every record is added once and dropped at most once: linear in the layer's size.
        self.dirs: dict[_Key, str] = {(): ""}
        self.lookups: dict[str, list[_Key]] = {}
        self.derived: dict[_Key, list[_Key]] = {}
        self.dir_meta: dict[str, _DirMeta] = {}
        # real path -> the directories created right below it, to forget a removed subtree's
        # metadata without scanning every directory
        self.subdirs: dict[str, list[str]] = {}
        self.reserve = limits.min_free
        self.budget = 0  # bytes that may be written before the free space is asked again
        self.entries = 0
        self.unpacked = 0
        self.owner = (os.geteuid(), os.getegid())
        self.umask = os.umask(0o022)
        os.umask(self.umask)
        # the file index, kept as the tree is written (None: not asked for)
        self.tree = IndexTree(whiteouts, self.owner) if index else None

    def host(self, rel: str) -> str:
        return f"{self.dest}/{rel}" if rel else self.dest

    # -- paths ---------------------------------------------------------------------------------

    def resolve_dir(self, parts: list[str], entry: str, *, create: bool) -> str:
        """Real path (relative to dest) of directory ``parts``, following in-layer symlinks."""
        key = tuple(parts)
        hit = self.dirs.get(key)
        if hit is not None:
            return hit
        known = len(key) - 1
        while (real := self.dirs.get(key[:known])) is None:
            known -= 1
        for i in range(known, len(key)):
            real = self.step(real, key[: i + 1], entry, create)
        return real

    def step(self, start: str, key: _Key, entry: str, create: bool) -> str:
        """Resolve the last component of ``key`` from its parent's real path ``start``."""
        self.out.sync()
        real = start.split("/") if start else []
        # components still to walk, last first, each with the symlink it came from
        pending = [(key[-1], "")]
        hops = 0
        looked: list[str] = []
        while pending:
            comp, via = pending.pop()
            if comp in ("", "."):
                continue
            if comp == "..":
                if not real:
                    raise SymlinkEscape(entry, "a symlink on its path points outside the layer")
                real.pop()
                continue
            rel = "/".join([*real, comp])
            path = self.host(rel)
            looked.append(rel)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise
                if via:
                    # tar and Docker fail here too: writing through a dangling symlink
                    raise LayerError(
                        f"tar entry {entry!r}: goes through symlink {via}, whose target"
                        f" {rel} does not exist"
                    ) from None
                os.mkdir(path, 0o755)
                self.created.add(hash(path))
                self.made_dir(rel)
                if self.tree is not None:
                    self.tree.mkdir(rel, 0o755 & ~self.umask, *self.owner)
                real.append(comp)
                continue
            if stat.S_ISDIR(st.st_mode):
                real.append(comp)
            elif stat.S_ISLNK(st.st_mode):
                hops += 1
                target = os.readlink(path)
                if target.startswith("/"):
                    raise SymlinkEscape(
                        entry, f"goes through symlink {rel} -> {target}, outside the layer"
                    )
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkEscape(entry, "too many levels of symlinks")
                pending.extend((c, rel) for c in reversed(target.split("/")))
            elif create and self.fmt.whiteout_target(comp, st) is not None:
                # "deleted, then written below": a new directory hiding the lower one
                self.forget(rel, directory=False)
                os.unlink(path)
                os.mkdir(path, 0o755)
                self.made_dir(rel)
                self.fmt.write_opaque(path)
                if self.tree is not None:
                    self.tree.remove(rel)
                    self.tree.mkdir(rel, 0o755 & ~self.umask, *self.owner)
                    self.tree.mark_opaque(rel)
                real.append(comp)
            else:
                raise LayerError(f"tar entry {entry!r}: {rel} is not a directory")
        result = "/".join(real)
        self.remember_dir(key, result, looked)
        return result

    def remember_dir(self, key: _Key, real: str, looked: list[str]) -> None:
        """As-written directory ``key`` is the real directory ``real``, found by looking at
        the paths ``looked``."""
        self.dirs[key] = real
        self.derived.setdefault(key[:-1], []).append(key)
        for rel in looked:
            self.lookups.setdefault(rel, []).append(key)

    def may_exist(self, path: str) -> bool:
        """Whether something may already be at ``path`` (False: surely nothing)."""
        return not self.fresh or hash(path) in self.created

    def made_dir(self, rel: str) -> None:
        """Note a directory this layer created, so its subtree can be forgotten if removed."""
        self.subdirs.setdefault(rel.rpartition("/")[0], []).append(rel)

    def clear(self, path: str) -> bool:
        """Remove what is at ``path`` so a new entry can take its place; True if it was a
        whiteout of this layer."""
        self.out.sync()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        rel = path[len(self.dest) + 1 :]
        if self.tree is not None:
            self.tree.remove(rel)
        if stat.S_ISDIR(st.st_mode):
            self.forget(rel, directory=True)
            remove_path(path)
            return False
        self.forget(rel, directory=False)
        os.unlink(path)
        return self.fmt.whiteout_target(os.path.basename(path), st) is not None

    def forget(self, rel: str, *, directory: bool) -> None:
        """``rel`` is about to be removed or replaced: drop every path resolution that looked at
        it (and those built on them), and, for a directory, what was noted about its subtree."""
        stale = self.lookups.pop(rel, None)
        while stale:
            key = stale.pop()
            if self.dirs.pop(key, None) is not None:
                stale.extend(self.derived.pop(key, ()))
        if directory:
            doomed = [rel]
            while doomed:
                gone = doomed.pop()
                self.dir_meta.pop(gone, None)
                doomed.extend(self.subdirs.pop(gone, ()))

    # -- entries -------------------------------------------------------------------------------

    def apply(self) -> None:
        try:
            self.entries_all()
            self.out.sync()
        except WriteFailed as exc:
            raise self.failed(exc) from exc.error
        try:
            self.finish_dirs()
        except OSError as exc:
            raise self.refused(exc, exc.filename or "a directory") from exc

    def entries_all(self) -> None:
        """Every entry of the tar, in order (some of their calls still queued at the end)."""
        while True:
            member = self.tar.next()
            if member is None:
                break
            self.entries += 1
            if self.entries > self.limits.max_entries:
                raise LimitExceeded(
                    f"layer has more than the limit of {self.limits.max_entries} entries"
                )
            if len(member.name) > self.limits.max_path:
                raise LayerError(f"tar entry name longer than {self.limits.max_path} characters")
            if self.reserve:
                size = member.size if member.type == REGULAR else 0
                self.budget -= size + ENTRY_COST
                if self.budget < 0:
                    self.check_free(size)
            try:
                self.entry(member)
            except OSError as exc:
                raise self.refused(exc, member.name) from exc

    def failed(self, exc: WriteFailed) -> BaseException:
        """The error to raise for a queued call that failed."""
        if isinstance(exc.error, OSError):
            return self.refused(exc.error, exc.name)
        return exc.error

    def check_free(self, size: int) -> None:
        """Stop before the file system's free space falls below the reserve."""
        self.out.sync()
        free = free_bytes(self.dest)
        if free - size - ENTRY_COST < self.reserve:
            raise StoreFull(free, self.reserve)
        self.budget = min(FREE_CHECK_BYTES, free - size - ENTRY_COST - self.reserve)

    def refused(self, exc: OSError, name: str) -> Exception:
        """The typed error for what the file system refused while writing entry ``name``."""
        if exc.errno in DISK_FULL:
            try:
                free = free_bytes(self.dest)
            except OSError:
                free = 0
            return StoreFull(free, self.reserve)
        if exc.errno in _ENTRY_ERRNOS:
            return LayerError(f"tar entry {name!r}: the file system refused it: {exc.strerror}")
        return exc

    def entry(self, m: Header) -> None:
        parts = clean_name(m.name)
        kind = m.type
        if not parts:
            if kind != DIRECTORY:
                # tar refuses it; Docker would remove the whole tree to put a file there
                raise UnsafeEntry(m.name, "names the layer's root but is not a directory")
            self.dir_meta[""] = _DirMeta(self.dest, m.mode, m.uid, m.gid, m.mtime_ns)
            return
        base = parts[-1]
        parent_rel = self.resolve_dir(parts[:-1], m.name, create=True)
        parent = self.host(parent_rel)
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(m, parent, parent_rel, base)
            return
        path = f"{parent}/{base}"
        if kind == REGULAR:
            self.regular(m, path)
        elif kind == DIRECTORY:
            self.directory(m, parts, path, f"{parent_rel}/{base}" if parent_rel else base)
            return
        elif kind == HARDLINK:
            self.hardlink(m, path)
            return
        elif kind == SYMLINK:
            if self.may_exist(path):
                self.clear(path)
            self.created.add(hash(path))
            uid, gid = (m.uid, m.gid) if self.privileged else (-1, -1)
            self.out.put((NEW_SYMLINK, m.linkname, path, uid, gid, m.mtime_ns, m.name))
            if self.tree is not None:
                self.tree.add(
                    path[len(self.dest) + 1 :],
                    TreeNode(stat.S_IFLNK, 0o777, *self.owned(m), link=m.linkname),
                )
        else:
            self.special(m, path)
        if m.pax:
            self.set_xattrs(path, m)

    def whiteout(self, m: Header, parent: str, parent_rel: str, base: str) -> None:
        self.entries -= 1
        self.out.sync()
        if base == OPAQUE_MARKER:
            self.fmt.write_opaque(parent)
            if self.tree is not None:
                self.tree.mark_opaque(parent_rel)
            return
        target = base[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):
            raise PathTraversal(m.name, "whiteout of an invalid name")
        doomed = f"{parent}/{target}"
        self.created.add(hash(doomed))  # where the store's form may put its marker
        try:
            st = os.lstat(doomed)
        except FileNotFoundError:
            pass
        else:
            self.forget(doomed[len(self.dest) + 1 :], directory=stat.S_ISDIR(st.st_mode))
        self.fmt.write_whiteout(parent, target)
        if self.tree is not None:
            self.tree.whiteout(parent_rel, target)

    def directory(self, m: Header, parts: list[str], path: str, rel: str) -> None:
        hidden = f"{os.path.dirname(path)}/{WHITEOUT_PREFIX}{os.path.basename(path)}"
        if not self.may_exist(path) and not self.may_exist(hidden):
            # surely new, and hiding nothing: made by the writer (fswriter.py)
            self.created.add(hash(path))
            self.out.put((MKDIR, path, 0o700, m.name))
            self.made_dir(rel)
            if self.tree is not None:
                self.tree.mkdir(rel, 0o700, *self.owner)  # mode and owner: finish_dirs'
            self.remember_dir(tuple(parts), rel, [rel])
            self.dir_meta[rel] = _DirMeta(path, m.mode, m.uid, m.gid, m.mtime_ns)
            if m.pax:
                self.set_xattrs(path, m)
            return
        self.out.sync()
        try:
            st: os.stat_result | None = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            # a directory written where this layer deleted something hides the lower one
            hides = self.clear(path) if st is not None else os.path.lexists(hidden)
            os.mkdir(path, 0o700)
            self.created.add(hash(path))
            self.made_dir(rel)
            if self.tree is not None:
                self.tree.mkdir(rel, 0o700, *self.owner)  # mode and owner: finish_dirs'
            if hides:
                self.fmt.write_opaque(path)
                if self.tree is not None:
                    self.tree.mark_opaque(rel)
        self.dir_meta[rel] = _DirMeta(path, m.mode, m.uid, m.gid, m.mtime_ns)
        if m.pax:
            self.set_xattrs(path, m)

    def regular(self, m: Header, path: str) -> None:
        self.unpacked += m.size
        if self.unpacked > self.limits.max_bytes:
            raise LimitExceeded(f"layer unpacks to more than {self.limits.max_bytes} bytes")
        mode = stat.S_IMODE(m.mode)
        if self.may_exist(path):
            self.clear(path)
        self.created.add(hash(path))
        self.out.put((OPEN, path, mode & 0o777, m.name))
        digest = self.copy(m)
        if self.tree is not None:
            self.tree.add(
                path[len(self.dest) + 1 :],
                TreeNode(stat.S_IFREG, mode, *self.owned(m), size=m.size, sha256=digest),
            )
        # skip the calls that would change nothing: most files are root's, mode 644/755;
        # open() already gave the mode, unless umask cut bits or it has setuid/sticky
        chowned = self.privileged and (m.uid, m.gid) != self.owner
        uid, gid = (m.uid, m.gid) if chowned else (-1, -1)
        fix_mode = mode if mode & (self.umask | 0o7000) else -1
        self.out.put((CLOSE, uid, gid, fix_mode, m.mtime_ns))

    def copy(self, m: Header) -> bytes | None:
        """Queue the current entry's contents for writing; with a file index, their sha256,
        taken on the way (None without)."""
        read = self.tar.read_data
        put = self.out.put
        digest = None if self.tree is None else hashlib.sha256()
        left = m.size
        while left:
            chunk = read(min(CHUNK, left))
            if not chunk:
                raise CorruptArchive(f"tar ends inside {m.name!r}: the layer is truncated")
            left -= len(chunk)
            if digest is not None:
                digest.update(chunk)
            put((WRITE, chunk), len(chunk))
        return None if digest is None else digest.digest()

    def owned(self, m: Header) -> tuple[int, int]:
        """The owner an entry gets on disk: the tar's when privileged, else this process'."""
        return (m.uid, m.gid) if self.privileged else self.owner

    def hardlink(self, m: Header, path: str) -> None:
        self.out.sync()
        try:
            target_parts = clean_name(m.linkname)
        except PathTraversal:
            raise HardlinkEscape(
                m.name, f"hardlink target {m.linkname!r} is outside the layer"
            ) from None
        missing = HardlinkEscape(m.name, f"hardlink target {m.linkname!r} is not in this layer")
        if not target_parts:
            raise HardlinkEscape(m.name, "hardlink to the layer's root")
        try:
            target_dir = self.resolve_dir(target_parts[:-1], m.name, create=False)
        except (FileNotFoundError, LayerError):
            raise missing from None
        target = f"{self.host(target_dir)}/{target_parts[-1]}"
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            raise missing from None
        if stat.S_ISDIR(st.st_mode) or self.fmt.whiteout_target(target_parts[-1], st):
            raise HardlinkEscape(m.name, f"hardlink target {m.linkname!r} is not a file")
        if target == path:
            # tar and Docker remove the old file first and then find no target
            raise HardlinkEscape(m.name, "hardlink to itself")
        self.clear(path)
        os.link(target, path, follow_symlinks=False)
        self.created.add(hash(path))
        if self.tree is not None:
            self.tree.hardlink(path[len(self.dest) + 1 :], target[len(self.dest) + 1 :])

    def special(self, m: Header, path: str) -> None:
        self.clear(path)
        self.created.add(hash(path))
        if m.type == FIFO:
            os.mkfifo(path, 0o600)
        else:
            if not self.privileged:
                raise DeviceNotPermitted(m.name, "device nodes need a privileged (root) unpack")
            kind = stat.S_IFCHR if m.type == CHAR else stat.S_IFBLK
            os.mknod(path, 0o600 | kind, os.makedev(m.devmajor, m.devminor))
        self.set_owner(path, m)
        os.chmod(path, stat.S_IMODE(m.mode))
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns))
        if self.tree is not None:
            fmt = {FIFO: stat.S_IFIFO, CHAR: stat.S_IFCHR}.get(m.type, stat.S_IFBLK)
            rdev = 0 if m.type == FIFO else os.makedev(m.devmajor, m.devminor)
            self.tree.add(
                path[len(self.dest) + 1 :],
                TreeNode(fmt, stat.S_IMODE(m.mode), *self.owned(m), rdev=rdev),
            )

    def set_owner(self, path: str, m: Header) -> None:
        if self.privileged:
            os.lchown(path, m.uid, m.gid)

    def set_xattrs(self, path: str, m: Header) -> None:
        for key, value in m.pax.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            name = key[len(XATTR_PAX_PREFIX) :]
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            if "\x00" in name:
                raise UnsafeEntry(m.name, f"xattr name {name!r} has a NUL byte")
            raw = value.encode("utf-8", "surrogateescape")
            # what the file system refuses is skipped as Docker skips it (fswriter.SETXATTR)
            self.out.put((SETXATTR, path, name, raw, self.privileged, m.name))

    def finish_dirs(self) -> None:
        # Deepest first: setting a parent's mtime before its children are done would be undone.
        for rel in sorted(self.dir_meta, key=lambda r: r.count("/") + (r != ""), reverse=True):
            meta = self.dir_meta[rel]
            if self.privileged:
                os.lchown(meta.path, meta.uid, meta.gid)
            os.chmod(meta.path, stat.S_IMODE(meta.mode))
            os.utime(meta.path, ns=(meta.mtime_ns, meta.mtime_ns))

    def records(self) -> tuple[FileRecord, ...] | None:
        """The file index of the finished tree (None when not asked for)."""
        if self.tree is None:
            return None
        modes = {
            rel: (
                stat.S_IMODE(meta.mode),
                *((meta.uid, meta.gid) if self.privileged else self.owner),
            )
            for rel, meta in self.dir_meta.items()
        }
        return tuple(self.tree.records(modes))


def apply_layer(
    stream: BinaryIO,
    dest: Path,
    *,
    whiteouts: WhiteoutFormat,
    limits: ApplyLimits | None = None,
    privileged: bool | None = None,
    index: bool = True,
    spare: Callable[[], bool] | None = None,
) -> ApplyResult:
    """Unpack the layer tar in ``stream`` (tar, gzip or zstd) into the empty directory ``dest``.

    ``spare`` says whether a core is free for a writer process (fswriter.py; None: one is).
    Returns the layer's DiffID, sizes and, with ``index``, its file index: each entry's
    record, each regular file's sha256 computed as its bytes are written. Raises a LayerError
    subclass for anything unsafe or malformed; ``dest`` is then in an undefined state and the
    caller discards it (snapshots are unpacked in ``tmp/`` for exactly this reason).
    """
    limits = limits or ApplyLimits()
    if privileged is None:
        privileged = os.geteuid() == 0
    plain, compression = decompressed(stream)
    feeder = _Feeder(plain, limits.max_bytes)
    out = FileWriter(spare)
    try:
        reader = io.BufferedReader(feeder, buffer_size=CHUNK)
        applier = _Applier(
            os.fspath(dest), TarReader(reader), whiteouts, limits, privileged, out, index
        )
        applier.apply()
        # the DiffID covers the whole stream, the zero blocks after the last entry included
        while reader.read(CHUNK):
            pass
    finally:
        out.close()
        feeder.close()
    return ApplyResult(
        diff_id=feeder.digest,
        tar_size=feeder.size,
        unpacked_size=applier.unpacked,
        entry_count=applier.entries,
        file_count=applier.entries - len(applier.dir_meta),
        compression=compression,
        files=applier.records(),
    )
