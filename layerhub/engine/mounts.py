"""Mount points under the store: see them, unmount them, and never walk into them.

A leftover overlay mount (an interrupted command's) under ``tmp/`` shows a container's writable
layer: walking or deleting through it would destroy that container. statx's
STATX_ATTR_MOUNT_ROOT tells any mount root apart, a bind mount of the same file system too;
``/proc/self/mountinfo`` lists what is mounted below a path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

_libc = ctypes.CDLL(None, use_errno=True)


class MountInTheWay(OSError):
    """A removal or walk met a mount point and stopped there instead of going through it.

    Not a user's error: something mounted inside the store (a leftover overlay of an
    interrupted command) that must be unmounted before the tree around it can go.
    """

    def __init__(self, mount_points: list[str]) -> None:
        super().__init__(
            errno.EBUSY, "a live mount is in the way (not removed through it)", mount_points[0]
        )
        self.mount_points = mount_points


class _Statx(ctypes.Structure):
    # the head of struct statx; the kernel writes at most 256 bytes
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 192),
    ]


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_STATX_ATTR_MOUNT_ROOT = 0x2000
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_Statx),
    ]


def is_mount_root(path: str | os.PathLike[str], st: os.stat_result | None = None) -> bool:
    """Whether ``path`` (not followed if a symlink) is the root of a mount.

    statx's STATX_ATTR_MOUNT_ROOT also sees a bind mount of a directory of the same file
    system, which a ``st_dev`` comparison cannot; without it (old kernels) fall back to
    comparing with the parent directory as ``os.path.ismount`` does.
    """
    if _statx is not None:
        buf = _Statx()
        found = _statx(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW, 0, ctypes.byref(buf))
        if found == 0 and buf.stx_attributes_mask & _STATX_ATTR_MOUNT_ROOT:
            return bool(buf.stx_attributes & _STATX_ATTR_MOUNT_ROOT)
    st = st or os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        return False
    parent = os.lstat(os.path.join(path, os.pardir))
    return parent.st_dev != st.st_dev or parent.st_ino == st.st_ino


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points (in this process's mount namespace) at ``path`` or below it, deepest
    first, so unmounting them in this order never meets a busy parent."""
    base = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = _unescape_mountinfo(line.split()[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def _umount2(target: str, flags: int) -> None:
    if _libc.umount2(os.fsencode(target), flags | _UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def unmount_under(path: str | os.PathLike[str]) -> list[str]:
    """Unmount everything mounted at or below ``path``; return the mount points that were.

    A busy mount is detached (MNT_DETACH): it leaves the tree at once and the kernel frees it
    when its last user goes, so nothing below ``path`` is reachable through it afterwards. The
    mounted file system's own content is never touched. Raises OSError if one cannot go.
    """
    done: list[str] = []
    for _ in range(8):  # mounts stacked on one point come off one per pass
        points = mount_points_under(path)
        if not points:
            return done
        for point in points:
            try:
                _umount2(point, 0)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # no longer a mount point
                    continue
                if exc.errno != errno.EBUSY:
                    raise
                _umount2(point, _MNT_DETACH)
            done.append(point)
    left = mount_points_under(path)
    if left:
        raise MountInTheWay(left)
    return done


def mount_root_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` in ``dir_fd`` is a mount root (False where statx cannot say: the
    callers compare ``st_dev`` as well)."""
    if _statx is None:
        return False
    buf = _Statx()
    if _statx(dir_fd, os.fsencode(name), _AT_SYMLINK_NOFOLLOW, 0, ctypes.byref(buf)) != 0:
        return False
    return bool(buf.stx_attributes_mask & buf.stx_attributes & _STATX_ATTR_MOUNT_ROOT)
