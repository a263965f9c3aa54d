"""Small filesystem helpers the store needs: durable renames, locks, in-flight temp entries."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path``.

    One syncfs() after unpacking a whole layer costs far less than an fsync per file, and it
    is what makes "rename the finished snapshot into place" safe across a power loss.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file, symlink or whole directory tree; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        # A tree unpacked from a layer may hold read-only directories: make them writable first.
        def onerror(func: object, p: str, exc: object) -> None:
            parent = os.path.dirname(p)
            os.chmod(parent, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
                shutil.rmtree(p, onerror=onerror)
            else:
                os.unlink(p)

        shutil.rmtree(path, onerror=onerror)
    else:
        os.unlink(path)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed) for the block.

    Locks die with the process, so a killed worker never leaves a stale lock behind.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


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
            os.close(self.fd)
            self.fd = -1


def sweep_tmp(tmp: Path) -> int:
    """Remove every entry in ``tmp`` that no live process holds; return how many."""
    removed = 0
    for entry in tmp.iterdir():
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            entry.unlink(missing_ok=True)
            removed += 1
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            remove_path(entry)
            removed += 1
        finally:
            os.close(fd)
    return removed


def tree_usage(root: Path) -> tuple[int, int]:
    """(bytes, files) under ``root``: bytes of regular files, each hardlinked inode once, and
    the number of entries that are not directories (as a layer's size and file count)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    files = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_size
    return total, files
