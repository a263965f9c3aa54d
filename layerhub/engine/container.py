"""A container's writable layer: one upper directory over an image's read-only snapshots.

The upper directory holds only what the container changed, in the store's whiteout form, exactly
as overlayfs keeps its ``upperdir``, so ``diff_to_store`` turns it into a layer as it is and a
kernel overlay mount could use it as it is:

- copy-up: before a path changes, each parent directory is created in the upper directory with
  the lower directory's mode, owner, xattrs and times (metadata only); changing a lower file's
  mode copies the whole file up first. The lower snapshots are only ever read.
- a deleted path that a lower layer still shows gets a whiteout; a directory made where a
  whiteout was is opaque, so the old children stay hidden.
- renaming a lower directory does what ``mv`` does when overlayfs (without ``redirect_dir``)
  answers EXDEV: copy the merged tree to the new name, then delete the old one.

Paths are absolute image paths. Symlinks among the parents are resolved in the merged view with
chroot semantics (absolute targets start at the container's root, ``..`` stops at it), so a
change always lands inside the upper directory; the last component is never followed except by
``chmod``, which follows it as chmod(2) does.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import Conflict, ContainerPathError, InvalidPath, PathNotFound
from .fsutil import remove_path
from .union import Entry, UnionView, join_path, split_path
from .whiteouts import OVERLAY_XATTR_PREFIXES, WHITEOUT_PREFIX, WhiteoutFormat

MAX_SYMLINK_HOPS = 40  # the kernel's limit before ELOOP
CHUNK = 1 << 20


@contextlib.contextmanager
def container_lock(
    locks: Path, container_id: str, *, name: str = "", wait: float | None = 0.0
) -> Iterator[None]:
    """Hold the container's one lock (``locks/container-<id>.lock``) for the block.

    Running a command, changing files, committing and removing a container each take it, so
    none of them sees another's half-done work (a commit capturing a file a command is still
    writing, a write into an upper directory runc has mounted). ``wait`` is how long to wait
    for it in seconds (None: as long as it takes); when it is not free by then this raises
    Conflict naming ``name`` (the container's name, for people). flock: a killed holder
    releases it.
    """
    if not container_id.isalnum():
        raise ValueError(f"not a container ID: {container_id!r}")
    fd = os.open(
        locks / f"container-{container_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    raise Conflict(
                        f"container {name or container_id[:12]} is busy: a command is running"
                        " in it or it is being committed; try again when that ends"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Change:
    """One line of ``docker diff``: ``A`` added, ``C`` changed or ``D`` deleted, and the path."""

    kind: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"


def _privileged() -> bool:
    # as when applying a layer: ownership is kept only where the process may give it away
    return os.geteuid() == 0


def _check_mode(mode: int) -> int:
    if not 0 <= mode <= 0o7777:
        raise ContainerPathError(f"invalid mode {mode:#o}: permission bits only (0 to 0o7777)")
    return mode


def _copy_xattrs(src: Path, dst: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIXES):
            continue  # overlay bookkeeping of the lower layer never describes the copy
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError:
            pass  # what the host cannot store is skipped, as when applying a layer


def _copy_entry(
    st: os.stat_result,
    src: Path,
    dst: Path,
    links: dict[tuple[int, int, int], Path] | None = None,
    layer: int = 0,
) -> None:
    """Create ``dst`` as a copy of ``src`` (a directory without its children): content, owner,
    mode and xattrs, not times. ``links`` keeps hardlinked files linked within one copy, and
    only within one ``layer``: files of two layers that share an inode were linked by the
    store's dedup, not by the image, and stay two files."""
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        os.mkdir(dst, 0o700)
    elif stat.S_ISREG(mode):
        if links is not None and st.st_nlink > 1:
            key = (layer, st.st_dev, st.st_ino)
            if key in links:
                os.link(links[key], dst, follow_symlinks=False)
                return
            links[key] = dst
        with open(src, "rb") as fin, open(dst, "xb") as fout:  # "x": O_EXCL, never follows
            shutil.copyfileobj(fin, fout, CHUNK)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISFIFO(mode):
        os.mkfifo(dst, 0o600)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        if not _privileged():
            raise ContainerPathError(f"{src.name}: copying a device node up needs root")
        os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
    else:
        raise ContainerPathError(f"{src.name}: a socket cannot be copied into a layer")
    if _privileged():
        os.lchown(dst, st.st_uid, st.st_gid)  # before chmod: chown clears setuid bits
    if not stat.S_ISLNK(mode):
        os.chmod(dst, stat.S_IMODE(mode))
    _copy_xattrs(src, dst)


def _set_times(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


class ContainerFS:
    """The writable layer of a container: changes go to ``upper``, ``lowers`` stay untouched.

    ``lowers`` are the image's snapshot directories, bottom first; ``whiteouts`` is the store's
    form, in which deletions and opaque directories are written into ``upper``.
    """

    def __init__(self, upper: Path, lowers: Sequence[Path], whiteouts: WhiteoutFormat) -> None:
        self.upper = Path(upper)
        self.lowers = [Path(p) for p in lowers]
        self.fmt = whiteouts
        self.upper.mkdir(parents=True, exist_ok=True)
        self._view = UnionView([*self.lowers, self.upper], whiteouts)
        self._top = len(self.lowers)  # the upper directory's layer index in the view

    @property
    def view(self) -> UnionView:
        """The merged tree the container sees: the lowers with the upper directory on top."""
        return self._view

    # -- paths -------------------------------------------------------------------------------

    @staticmethod
    def _parts(path: str) -> list[str]:
        parts = split_path(path)
        for name in parts:
            if name.startswith(WHITEOUT_PREFIX):
                raise InvalidPath(f"{path}: names starting with {WHITEOUT_PREFIX!r} mark deletions")
        return parts

    def _resolve(
        self, path: str, *, follow: bool, missing: type[Exception] = ContainerPathError
    ) -> tuple[list[str], Entry | None]:
        """The real components of ``path`` (symlinks among its parents resolved in the merged
        view, the last one too with ``follow``) and the entry there, if any.

        A missing parent, or one that is not a directory, raises ``missing``.
        """
        pending = self._parts(path)[::-1]
        real: list[str] = []
        entry: Entry | None = self._view.lookup("/")
        stale = False  # whether ``entry`` no longer describes ``real``
        hops = 0
        while pending:
            name = pending.pop()
            if name == "..":  # only from symlink targets; clamped at the root as chroot does
                if real:
                    real.pop()
                stale = True
                continue
            last = not pending
            entry = self._view.lookup(join_path([*real, name]))
            stale = False
            if entry is not None and stat.S_ISLNK(entry.st.st_mode) and (follow or not last):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise ContainerPathError(f"{path}: too many levels of symbolic links")
                target = os.readlink(entry.host_path)
                if target.startswith("/"):
                    real = []
                pending.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                stale = True
                continue
            if not last and (entry is None or not entry.is_dir):
                problem = "no such directory" if entry is None else "not a directory"
                raise missing(f"{path}: {problem}")
            real.append(name)
        if stale:
            entry = self._view.lookup(join_path(real))
        return real, entry

    def _upper_path(self, real: Sequence[str]) -> Path | None:
        """Where ``real`` is in the upper directory, if its parents are real directories there."""
        host = self.upper
        for name in real[:-1]:
            host = host / name
            try:
                if not stat.S_ISDIR(os.lstat(host).st_mode):
                    return None
            except FileNotFoundError:
                return None
        return host / real[-1]

    # -- copy-up -----------------------------------------------------------------------------

    def _clone(self, entry: Entry, dst: Path) -> None:
        """Copy one lower entry up; the parent keeps its times, as overlayfs' copy-up does."""
        parent_st = os.lstat(dst.parent)
        _copy_entry(entry.st, entry.host_path, dst)
        _set_times(dst, entry.st)
        _set_times(dst.parent, parent_st)

    def _copy_up_dirs(self, real: Sequence[str]) -> Path:
        """Make the directory ``real`` (a directory in the merged view) exist in the upper
        directory, copying up each missing one; return its path there."""
        host = self.upper
        for i, name in enumerate(real):
            host = host / name
            try:
                st: os.stat_result | None = os.lstat(host)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                continue
            entry = self._view.lookup(join_path(real[: i + 1]))
            if st is not None or entry is None or not entry.is_dir or entry.layer == self._top:
                # the merged view and the upper directory disagree: never write through it
                raise ContainerPathError(f"{join_path(real[: i + 1])}: not a directory")
            self._clone(entry, host)
        return host

    def _copy_up(self, real: Sequence[str], entry: Entry) -> Path:
        """The upper path of an existing entry, copied up (content and all) if it is lower."""
        if entry.layer == self._top:
            return entry.host_path
        dst = self._copy_up_dirs(real[:-1]) / real[-1]
        self._clone(entry, dst)
        return dst

    def _clear(self, parent: Path, name: str) -> bool:
        """Remove what the upper directory has at ``parent/name`` (entry or whiteout); return
        whether a whiteout was there."""
        hid = False
        for candidate in (name, WHITEOUT_PREFIX + name):
            host = parent / candidate
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                continue
            whiteout = self.fmt.whiteout_target(candidate, st) == name
            if candidate == name or whiteout:
                remove_path(host)
                hid = hid or whiteout
        return hid

    def _make_room(self, real: Sequence[str]) -> tuple[Path, bool]:
        """Copy up the parents of ``real`` and clear its place in the upper directory; return
        the upper path and whether a whiteout was there (a new directory must then be opaque)."""
        name = real[-1]
        if name.startswith(WHITEOUT_PREFIX):  # reached through a symlink's target
            raise InvalidPath(f"{join_path(real)}: names starting with {WHITEOUT_PREFIX!r}")
        parent = self._copy_up_dirs(real[:-1])
        return parent / name, self._clear(parent, name)

    def _erase(self, real: Sequence[str]) -> None:
        """Delete ``real``: drop the upper copy, then hide any lower one with a whiteout."""
        host = self._upper_path(real)
        if host is not None:
            remove_path(host)
        if self._view.lookup(join_path(real)) is not None:
            self.fmt.write_whiteout(self._copy_up_dirs(real[:-1]), real[-1])

    def _new_dir(self, real: Sequence[str], mode: int) -> None:
        host, hid = self._make_room(real)
        os.mkdir(host, 0o700)
        if hid:
            self.fmt.write_opaque(host)
        os.chmod(host, mode)

    # -- changes -----------------------------------------------------------------------------

    def write_file(
        self,
        path: str,
        data: bytes | BinaryIO,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        """Create or replace the regular file at ``path`` (a symlink there is replaced, not
        followed). Ownership is set when the process is root."""
        _check_mode(mode)
        real, entry = self._resolve(path, follow=False)
        if entry is not None and entry.is_dir:
            raise ContainerPathError(f"{path}: is a directory")
        host, _ = self._make_room(real)
        fd = os.open(
            host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                shutil.copyfileobj(data, f, CHUNK)
            f.flush()  # a later write would clear setuid bits set below
            if _privileged():
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)

    def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = False) -> None:
        """Create a directory; with ``parents``, missing parents too (mode 0755) and an existing
        directory is fine, as ``mkdir -p``."""
        _check_mode(mode)
        if not parents:
            real, entry = self._resolve(path, follow=False)
            if entry is not None:
                raise ContainerPathError(f"{path}: file exists")
            self._new_dir(real, mode)
            return
        parts = self._parts(path)
        for i in range(1, len(parts) + 1):
            sub = join_path(parts[:i])
            real, entry = self._resolve(sub, follow=False)
            if entry is None:
                self._new_dir(real, mode if i == len(parts) else 0o755)
                continue
            if stat.S_ISLNK(entry.st.st_mode):
                entry = self._resolve(sub, follow=True)[1]
            if entry is None or not entry.is_dir:
                raise ContainerPathError(f"{sub}: exists and is not a directory")

    def remove(self, path: str, *, recursive: bool = False) -> None:
        """Delete a path; a directory with children needs ``recursive``."""
        real, entry = self._resolve(path, follow=False, missing=PathNotFound)
        if not real:
            raise ContainerPathError("refusing to remove /")
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        if entry.is_dir and not recursive and self._view.listdir(entry.path):
            raise ContainerPathError(f"{path}: directory not empty")
        self._erase(real)

    def chmod(self, path: str, mode: int) -> None:
        """Change permission bits (of a symlink's target, as chmod does), copying up first."""
        _check_mode(mode)
        real, entry = self._resolve(path, follow=True, missing=PathNotFound)
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        os.chmod(self._copy_up(real, entry), mode)

    def rename(self, src: str, dst: str) -> None:
        """Move a file, symlink or directory to ``dst``, which must not exist."""
        s_real, s_entry = self._resolve(src, follow=False, missing=PathNotFound)
        if not s_real:
            raise ContainerPathError("refusing to rename /")
        if s_entry is None:
            raise PathNotFound(f"{src}: no such file or directory")
        d_real, d_entry = self._resolve(dst, follow=False)
        if not d_real or d_entry is not None:
            raise ContainerPathError(f"{dst}: file exists")
        if d_real[: len(s_real)] == s_real:
            raise ContainerPathError(f"cannot move {src} into itself ({dst})")
        host, hid = self._make_room(d_real)
        if s_entry.layer == self._top and not s_entry.is_dir:
            os.rename(s_entry.host_path, host)
        else:
            self._copy_tree(s_entry, host, opaque=hid)
        self._erase(s_real)

    def _copy_tree(self, entry: Entry, dst: Path, *, opaque: bool) -> None:
        """Copy the merged tree at ``entry`` to ``dst`` in the upper directory, as ``mv``
        across filesystems does: modes, owners, times, xattrs and hardlinks kept."""
        links: dict[tuple[int, int, int], Path] = {}
        _copy_entry(entry.st, entry.host_path, dst, links, entry.layer)
        copied = [(dst, entry.st)]
        if entry.is_dir:
            if opaque:
                self.fmt.write_opaque(dst)
            for child in self._view.walk(entry.path):
                target = dst / child.path[len(entry.path) + 1 :]
                _copy_entry(child.st, child.host_path, target, links, child.layer)
                copied.append((target, child.st))
        for path, st in reversed(copied):  # children first: their creation moves dir mtimes
            _set_times(path, st)

    def symlink(self, path: str, target: str) -> None:
        """Create a symlink at ``path`` (replacing a non-directory there) pointing at
        ``target``, stored as given."""
        if not target or "\x00" in target:
            raise InvalidPath(f"{path}: invalid symlink target {target!r}")
        real, entry = self._resolve(path, follow=False)
        if entry is not None and entry.is_dir:
            raise ContainerPathError(f"{path}: is a directory")
        host, _ = self._make_room(real)
        os.symlink(target, host)


def container_changes(
    upper: Path, whiteouts: WhiteoutFormat, lower: UnionView | None
) -> list[Change]:
    """What ``docker diff`` lists for a writable directory over ``lower`` (the image's view).

    Read from the upper directory alone: its cost grows with the change, not the image. A
    whiteout is ``D``; an entry whose path the image has is ``C`` (copied-up parents included),
    any other ``A``; an opaque directory also deletes each image child it does not hold again.
    Sorted by path; markers are never listed. Without ``lower`` everything is ``A`` or ``D``.
    """
    changes: dict[str, str] = {}

    def visit(directory: str, prefix: str, below: Entry | None) -> None:
        present: set[str] = set()
        subdirs: list[tuple[str, str, Entry | None]] = []
        with os.scandir(directory) as scan:
            items = list(scan)
        for item in items:
            st = item.stat(follow_symlinks=False)
            target = whiteouts.whiteout_target(item.name, st)
            if target is not None:
                present.add(target)
                changes.setdefault(f"{prefix}/{target}", "D")
                continue
            if whiteouts.is_marker(item.name):
                continue
            path = f"{prefix}/{item.name}"
            present.add(item.name)
            # below a path the image lacks (or holds as a non-directory) nothing is in the image
            found = lower.lookup(path) if lower is not None and below is not None else None
            changes[path] = "C" if found is not None else "A"
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((item.path, path, found if found and found.is_dir else None))
        if prefix and below is not None and lower is not None and whiteouts.is_opaque(directory):
            for child in lower.listdir(prefix):
                if child.path.rsplit("/", 1)[1] not in present:
                    changes[child.path] = "D"
        for sub, path, found in subdirs:
            visit(sub, path, found)

    root = lower.lookup("/") if lower is not None else None
    visit(os.fspath(upper), "", root)
    return [Change(kind, path) for path, kind in sorted(changes.items())]
