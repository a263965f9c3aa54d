"""File-level dedup: identical files of different snapshots become hardlinks of one inode.

As OSTree and composefs keep each file once, a file of one snapshot that is byte for byte
the same as a file of another, and the same in everything a hardlink shares (type, mode,
owner, mtime, xattrs, security.capability among them, and the file system), is replaced by a
hardlink of the other's inode. Rules, each for a reason:

- only inside the snapshots given (the caller passes trees under ``snapshots/``), never a
  container's writable layer: a container writes to its files;
- at most one path per snapshot in a group: two paths of one snapshot linked together would
  make that layer's tar (``diff``, commit, a flattening export) carry a hardlink it never had;
- an inode is replaced only when every one of its links is a path of the group (a file that
  the layer itself hardlinks to another path keeps that link): then replacing it frees its
  bytes, exactly, and nothing else changes;
- the content is compared byte for byte before linking (an index's sha256 names the group,
  the disk decides);
- every path is opened component by component with ``O_NOFOLLOW`` (never through a symlink)
  and stays on the snapshot's file system (never across a mount point);
- the new link is made under a temporary name in the same directory and renamed over the
  old name, so a reader sees the old file or the new one, never none; the directory's times
  are put back (a snapshot's directory mtimes are part of what it holds).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InvalidPath

_CHUNK = 1 << 20
TEMP_PREFIX = ".layerhub-dedup-"
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + "[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A regular file of one snapshot: ``key`` names the snapshot (its ChainID), ``tree`` is
    its root directory, ``path`` the file relative to it ("usr/lib/libc.so.6")."""

    key: str
    tree: Path
    path: str


@dataclass
class GroupResult:
    """What one group of files with the same content became.

    ``linked`` lists each set of candidates that now share one inode (with at least two
    members, one per snapshot); ``freed_bytes`` is what replacing inodes freed (or, in a
    dry run, would free); ``files_linked`` how many paths were (or would be) replaced.
    ``skipped`` says why candidates were left alone.
    """

    linked: list[list[Candidate]] = field(default_factory=list)
    freed_bytes: int = 0
    files_linked: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass
class _Opened:
    candidate: Candidate
    parent_fd: int
    name: str
    fd: int
    st: os.stat_result
    attrs: tuple[object, ...]


def _components(path: str) -> list[str]:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidPath(f"not a relative path inside a snapshot: {path!r}")
    return parts


def _open_parent(tree: Path, path: str) -> tuple[int, str]:
    """An fd of the directory holding ``path`` in ``tree`` and the last component, reached
    without following a symlink and without leaving the tree's file system."""
    parts = _components(path)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tree, flags)
    try:
        dev = os.fstat(fd).st_dev
        for part in parts[:-1]:
            below = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = below
            if os.fstat(fd).st_dev != dev:
                raise InvalidPath(f"{path}: crosses a mount point")
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def remove_leftovers(tree: Path, directory: str, *, indexed: frozenset[str] = frozenset()) -> int:
    """Remove the temporary links a dedup killed between its link and its rename left in
    ``directory`` (relative to ``tree``; "" for the root): names of the form dedup gives
    them, hardlinks of a file, and not in the layer's own index (``indexed``, the paths a
    layer's tar really had under such a name). The directory's times are kept; returns how
    many went."""
    try:
        fd, _ = _open_parent(tree, f"{directory}/x" if directory else "x")
    except (OSError, InvalidPath):
        return 0
    removed = 0
    try:
        times = os.fstat(fd)
        for name in os.listdir(fd):
            path = f"{directory}/{name}" if directory else name
            if not _TEMP_NAME.fullmatch(name) or path in indexed:
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                os.unlink(name, dir_fd=fd)
                removed += 1
        if removed:
            os.utime(fd, ns=(times.st_atime_ns, times.st_mtime_ns))
    finally:
        os.close(fd)
    return removed


def _xattrs(fd: int) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(fd)
    except OSError:
        return ()
    values = []
    for name in sorted(names):
        try:
            values.append((name, os.getxattr(fd, name)))
        except OSError:
            values.append((name, b"\0unreadable"))
    return tuple(values)


def _open(candidate: Candidate) -> _Opened | str:
    """The candidate opened read-only, or why it is left alone."""
    try:
        parent_fd, name = _open_parent(candidate.tree, candidate.path)
    except (OSError, InvalidPath) as exc:
        return f"{candidate.key} {candidate.path}: {exc}"
    try:
        # a device node is never opened (opening one can do things): only a regular file
        if not stat.S_ISREG(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode):
            raise OSError(0, "not a regular file")
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent_fd
        )
    except OSError as exc:
        os.close(parent_fd)
        return f"{candidate.key} {candidate.path}: {exc.strerror}"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or os.fstat(parent_fd).st_dev != st.st_dev:
        os.close(fd)
        os.close(parent_fd)
        return f"{candidate.key} {candidate.path}: not a regular file of the snapshot"
    attrs = (st.st_dev, st.st_size, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, _xattrs(fd))
    return _Opened(candidate, parent_fd, name, fd, st, attrs)


def _same_bytes(a: int, b: int) -> bool:
    pos = 0
    while True:
        x = os.pread(a, _CHUNK, pos)
        y = os.pread(b, _CHUNK, pos)
        if x != y:
            return False
        if not x:
            return True
        pos += len(x)


def _relink(source: _Opened, target: _Opened) -> None:
    """Replace ``target``'s name with a hardlink of ``source``'s inode: linked under a
    temporary name in the same directory, then renamed over; the directory's times kept."""
    dir_st = os.fstat(target.parent_fd)
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    os.link(
        source.name,
        temp,
        src_dir_fd=source.parent_fd,
        dst_dir_fd=target.parent_fd,
        follow_symlinks=False,
    )
    try:
        made = os.stat(temp, dir_fd=target.parent_fd, follow_symlinks=False)
        if made.st_ino != source.st.st_ino:
            raise FileExistsError(f"{source.candidate.path} changed while it was compared")
        # the name must still be the file that was compared
        now = os.stat(target.name, dir_fd=target.parent_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (target.st.st_dev, target.st.st_ino):
            raise FileExistsError(f"{target.candidate.path} changed while it was compared")
        os.rename(temp, target.name, src_dir_fd=target.parent_fd, dst_dir_fd=target.parent_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=target.parent_fd)
        raise
    finally:
        os.utime(target.parent_fd, ns=(dir_st.st_atime_ns, dir_st.st_mtime_ns))


def link_identical(
    candidates: Sequence[Candidate],
    *,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> GroupResult:
    """Hardlink the ``candidates`` (files an index says have one content, each in a
    different snapshot) that are identical on disk (see the module docstring).

    Within those of equal attributes, the inode most of them already share is kept and each
    other inode whose links are all candidates is replaced, after its bytes compare equal.
    A dry run compares the same bytes and changes nothing: its figures are the run's.
    """
    result = GroupResult()
    seen_keys: set[str] = set()
    opened: list[_Opened] = []
    try:
        for candidate in candidates:
            if candidate.key in seen_keys:
                result.skipped.append(
                    f"{candidate.key} {candidate.path}: a second path of one snapshot"
                )
                continue
            item = _open(candidate)
            if isinstance(item, str):
                result.skipped.append(item)
                continue
            seen_keys.add(candidate.key)
            opened.append(item)
        partitions: dict[tuple[object, ...], list[_Opened]] = {}
        for item in opened:
            partitions.setdefault(item.attrs, []).append(item)
        for members in partitions.values():
            if len(members) < 2:
                continue
            if should_stop is not None and should_stop():
                break
            _link_partition(members, result, dry_run=dry_run)
    finally:
        for item in opened:
            os.close(item.fd)
            os.close(item.parent_fd)
    return result


def _link_partition(members: list[_Opened], result: GroupResult, *, dry_run: bool) -> None:
    by_inode: dict[int, list[_Opened]] = {}
    for item in members:
        by_inode.setdefault(item.st.st_ino, []).append(item)
    # keep the inode most members already share (the first, on a tie)
    keep_ino = max(by_inode, key=lambda ino: len(by_inode[ino]))
    kept = by_inode[keep_ino]
    source = kept[0]
    shared = list(kept)
    for ino, items in by_inode.items():
        if ino == keep_ino:
            continue
        if items[0].st.st_nlink != len(items):
            result.skipped.extend(
                f"{i.candidate.key} {i.candidate.path}: hardlinked to a path outside the group"
                for i in items
            )
            continue
        if not _same_bytes(source.fd, items[0].fd):
            result.skipped.extend(
                f"{i.candidate.key} {i.candidate.path}: content differs from the index"
                for i in items
            )
            continue
        done = 0
        for item in items:
            if not dry_run:
                try:
                    _relink(source, item)
                except OSError as exc:
                    result.skipped.append(f"{item.candidate.key} {item.candidate.path}: {exc}")
                    continue
            done += 1
            shared.append(item)
        result.files_linked += done
        if done == len(items):
            result.freed_bytes += items[0].st.st_size
    if len(shared) > 1:
        result.linked.append([item.candidate for item in shared])
