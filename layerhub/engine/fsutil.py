"""Small filesystem helpers the store needs: durable renames, locks, in-flight temp entries,
and walks and removals that are iterative and stop at mount points."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .mounts import MountInTheWay as MountInTheWay
from .mounts import is_mount_root as is_mount_root
from .mounts import mount_points_under as mount_points_under
from .mounts import mount_root_at
from .mounts import unmount_under as unmount_under

_libc = ctypes.CDLL(None, use_errno=True)
log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer could still use on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def total_bytes(path: str | os.PathLike[str]) -> int:
    """Size of the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path``.

    One syncfs() after unpacking a whole layer costs far less than an fsync per file, and it
    is what makes "rename the finished snapshot into place" safe across a power loss.
    """
    _syncfs(path)


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def write_back(path: Path) -> None:
    """An early pass of ``EarlyWriteback``: ``syncfs``, called for its side effect of
    writing dirty pages out now rather than at the flush (its own name, so that the flush
    that counts is told apart from the hints)."""
    _syncfs(path)


class EarlyWriteback:
    """Writes out a file system's dirty pages while work goes on, so that the one flush that
    makes the work durable (``syncfs``, afterwards) finds little left to wait for.

    A hint, never the flush itself: a thread of its own calls ``write_back`` every ``interval``
    seconds, waiting on the disk while the work keeps the cores busy. ``close`` stops it
    (without waiting for the pass under way); an error of a pass is left to the real flush.
    """

    def __init__(self, path: Path, interval: float = 0.25) -> None:
        self._path = path
        self._interval = interval
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="early-writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            with suppress(OSError):
                write_back(self._path)

    def close(self) -> None:
        """Make no further pass."""
        self._closed.set()


def _unlocked(mode: int) -> bool:
    # Root reads and empties any directory; anyone else needs rwx on it first (a tree
    # unpacked from a layer may hold read-only directories).
    return os.geteuid() == 0 or mode & 0o700 == 0o700


class _Walk:
    """A depth-first walk of one directory tree holding a single directory fd at a time.

    Every lookup is relative to the directory being read, so the walk costs the same at any
    depth, reaches trees deeper than PATH_MAX, and keeps one fd open however deep it goes;
    climbing back up opens ``..`` and checks it is the directory it came from. Directories on
    another ``st_dev``, or that are mount roots, are reported and never entered.
    """

    def __init__(self, top: str, st: os.stat_result, *, unlock: bool) -> None:
        self.top = top
        self.device = st.st_dev
        self.blocked: list[str] = []
        # a removal makes read-only directories usable; a measurement leaves them as they are
        self.unlock = unlock
        if unlock and not _unlocked(st.st_mode):
            os.chmod(top, 0o700)
        self.fd = os.open(top, _DIR_FLAGS)
        self.names: list[str] = []
        # per level: the directory's identity and the subdirectories still to visit
        self.levels: list[tuple[tuple[int, int], list[str]]] = []

    def path(self, name: str) -> str:
        return os.path.join(self.top, *self.names, name)

    def read(self, on_entry: Callable[[str, os.stat_result], None]) -> None:
        """List the current directory: every entry goes to ``on_entry``; subdirectories
        to enter are queued."""
        st = os.fstat(self.fd)
        subdirs: list[str] = []
        with os.scandir(self.fd) as entries:
            for entry in entries:
                est = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    if est.st_dev != self.device or mount_root_at(self.fd, entry.name):
                        self.blocked.append(self.path(entry.name))
                        continue
                    subdirs.append(entry.name)
                on_entry(entry.name, est)
        self.levels.append(((st.st_dev, st.st_ino), subdirs))

    def descend(self) -> bool:
        """Enter the next queued subdirectory of the current one; False when none is left."""
        subdirs = self.levels[-1][1]
        while subdirs:
            name = subdirs.pop()
            try:
                st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    continue
                if self.unlock and not _unlocked(st.st_mode):
                    os.chmod(name, 0o700, dir_fd=self.fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
            except FileNotFoundError:
                continue
            except PermissionError:
                if self.unlock:
                    raise
                continue  # not ours to read: measured as far as we can see
            os.close(self.fd)
            self.fd = child
            self.names.append(name)
            return True
        return False

    def climb(self) -> str | None:
        """Leave the current directory for its parent; return the name left (None at top)."""
        self.levels.pop()
        if not self.names:
            return None
        parent = os.open("..", _DIR_FLAGS, dir_fd=self.fd)
        st = os.fstat(parent)
        if (st.st_dev, st.st_ino) != self.levels[-1][0]:
            os.close(parent)
            raise OSError(errno.ESTALE, "directory moved during the walk", self.path(""))
        os.close(self.fd)
        self.fd = parent
        return self.names.pop()

    def close(self) -> None:
        os.close(self.fd)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, symlink or whole directory tree; a missing path is fine.

    Iterative at any depth (see _Walk), never follows a symlink, and never goes into a mount
    point (another ``st_dev``, or a mount root of the same file system): everything around a
    mount is removed, the mount and its content stay, and MountInTheWay names it.
    """
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(top)
        return
    if is_mount_root(top, st):
        raise MountInTheWay([top])
    walk = _Walk(top, st, unlock=True)
    try:

        def unlink(name: str, est: os.stat_result) -> None:
            if not stat.S_ISDIR(est.st_mode):
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=walk.fd)

        walk.read(unlink)
        while walk.levels:
            if walk.descend():
                walk.read(unlink)
                continue
            name = walk.climb()
            if name is not None:
                _rmdir(name, walk.fd, walk.path(name), walk.blocked)
    finally:
        walk.close()
    _rmdir(top, None, top, walk.blocked)
    if walk.blocked:
        raise MountInTheWay(walk.blocked)


def _rmdir(name: str, dir_fd: int | None, path: str, blocked: list[str]) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        # a directory still holding a mount we did not go through stays, and says why later
        inside = path.rstrip("/") + "/"
        busy = exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY)
        if not (busy and any(b.startswith(inside) for b in blocked)):
            raise


def walk_tree(root: str | os.PathLike[str]) -> Iterator[os.stat_result]:
    """The lstat of every entry below ``root``, iteratively, in no particular order.

    Symlinks are reported, never followed; a directory that is a mount point (another
    ``st_dev`` or a mount root) is neither reported nor entered.
    """
    top = os.fspath(root)
    walk = _Walk(top, os.lstat(top), unlock=False)
    found: list[os.stat_result] = []

    def collect(name: str, st: os.stat_result) -> None:
        found.append(st)

    try:
        walk.read(collect)
        while walk.levels:
            yield from found
            found.clear()
            if walk.descend():
                walk.read(collect)
            else:
                walk.climb()
        yield from found
    finally:
        walk.close()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed) for the block.

    Locks die with the process, so a killed worker never leaves a stale lock behind; and
    with the block, even in a process forked meanwhile (see ``_unlock``).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _unlock(fd)


def _unlock(fd: int) -> None:
    """Let go of a flock and close its descriptor. Unlocked explicitly, not by the close
    alone: a process forked while the lock was held (a worker's pool child forked while a
    thread of the main process evicts a snapshot) holds a copy of the descriptor, and a
    flock lasts until every copy is closed or one unlocks it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class HeldLock:
    """An exclusive flock held until ``release`` (see ``try_file_lock``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (again is harmless)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _unlock(fd)


def try_file_lock(path: Path) -> HeldLock | None:
    """The exclusive flock on ``path`` if nobody holds it, else None at once (never waits:
    a pull holding several layers' locks never waits for another's, so two pulls cannot
    wait for each other in a circle)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(fd)


class TempEntry:
    """A file or directory in ``tmp/`` that belongs to this process while it is open.

    The creator holds an flock on it; ``sweep_tmp`` removes only entries nobody holds, so a
    worker starting up never deletes another worker's in-flight download or unpack.
    """

    def __init__(self, tmp: Path, prefix: str, *, directory: bool) -> None:
        while True:
            if directory:
                name = tempfile.mkdtemp(prefix=prefix, dir=tmp)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                fd, name = tempfile.mkstemp(prefix=prefix, dir=tmp)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A sweeper may have removed the entry between create and lock: start again.
            try:
                if os.stat(name).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.fd = fd
        self.path = Path(name)

    def close(self, *, remove: bool) -> None:
        """Release the lock, removing the entry first unless it was renamed away."""
        if self.fd < 0:
            return
        try:
            if remove:
                remove_path(self.path)
        finally:
            fd, self.fd = self.fd, -1
            _unlock(fd)  # a child forked meanwhile must not keep a leftover looking live


@dataclass
class SweepReport:
    """What a sweep of ``tmp/`` did: entries removed, mounts taken off, entries left alone."""

    removed: int = 0
    unmounted: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def sweep(tmp: Path) -> SweepReport:
    """Remove every entry in ``tmp`` that no live process holds.

    A mount left under an entry (an overlay of a command that was killed) is unmounted first,
    never emptied through: its content usually is a container's writable layer. One that
    cannot be unmounted is left, with its entry, and named in the report (and the log).
    """
    report = SweepReport()
    for entry in tmp.iterdir():
        sweep_entry(entry, report)
    return report


def sweep_entry(entry: Path, report: SweepReport, *, modified_before: float | None = None) -> bool:
    """Remove one entry of a ``tmp/`` unless a live process holds it (see ``sweep``), or,
    with ``modified_before`` (a time.time() value), unless it was modified since; whether it
    was removed. A symlink is removed, never followed. Decided and done under the entry's
    own lock, so its holder cannot take it back meanwhile."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        if modified_before is not None and _modified_since(entry, modified_before):
            return False
        entry.unlink(missing_ok=True)
        report.removed += 1
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if modified_before is not None and os.fstat(fd).st_mtime >= modified_before:
            return False
        try:
            report.unmounted += unmount_under(entry)
            remove_path(entry)
        except OSError as exc:
            # MountInTheWay, or a mount that would not come off: leave the entry whole
            report.left.append(f"{entry}: a live mount ({exc.strerror})")
            log.warning("left %s: a live mount (%s)", entry, exc.strerror)
            return False
        report.removed += 1
        return True
    finally:
        os.close(fd)


def _modified_since(path: Path, moment: float) -> bool:
    try:
        return os.lstat(path).st_mtime >= moment
    except FileNotFoundError:
        return True  # gone already: nothing to remove


def sweep_tmp(tmp: Path) -> int:
    """Remove every entry in ``tmp`` that no live process holds; return how many (see sweep)."""
    return sweep(tmp).removed


def tree_usage(root: Path, *, seen: set[tuple[int, int]] | None = None) -> tuple[int, int]:
    """(bytes, files) under ``root``: bytes of regular files, each hardlinked inode once, and
    the number of entries that are not directories (as a layer's size and file count).

    ``seen`` carries hardlinked inodes across calls, to count one inode once over many trees.
    Iterative, never follows a symlink, never enters a mount point.
    """
    _, files, new = tree_usage_over(root, set() if seen is None else seen)
    return new, files


def tree_usage_over(root: Path, shared: set[tuple[int, int]]) -> tuple[int, int, int]:
    """(bytes, files, new bytes) under ``root``: its ``tree_usage``, and the bytes of its
    regular files whose inode ``shared`` (carried across calls) had not seen yet, so many
    trees are measured alone and together (the store's physical bytes) in one walk."""
    seen: set[tuple[int, int]] = set()
    total = files = new = 0
    for st in walk_tree(root):
        if stat.S_ISDIR(st.st_mode):
            continue
        files += 1
        if not stat.S_ISREG(st.st_mode):
            continue
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            if key not in shared:
                shared.add(key)
                new += st.st_size
        else:
            new += st.st_size
        total += st.st_size
    return total, files, new


def tree_freed_bytes(root: Path) -> int:
    """What removing ``root`` frees: bytes of its regular files whose every link is inside
    it (an inode also linked from elsewhere, say by the store's dedup, stays).

    Iterative, never follows a symlink, never enters a mount point.
    """
    links: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [links seen, nlink, size]
    total = 0
    for st in walk_tree(root):
        if not stat.S_ISREG(st.st_mode):
            continue
        if st.st_nlink == 1:
            total += st.st_size
            continue
        seen = links.setdefault((st.st_dev, st.st_ino), [0, st.st_nlink, st.st_size])
        seen[0] += 1
    return total + sum(size for count, nlink, size in links.values() if count >= nlink)
