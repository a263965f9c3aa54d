"""Kernel overlayfs mounts of a snapshot chain: mount, unmount for sure, and see what is mounted.

The container's writable directory must hold only plain changes the diff can read, so the mount
turns off what would write anything else there: ``redirect_dir`` (renamed directories recorded
as xattrs), ``metacopy`` (metadata-only copy-up, an upper file with no data) and ``index``
(which also ties the upper directory to the exact lower directories it first saw). With
``redirect_dir=off`` renaming a lower directory fails with EXDEV and ``mv`` copies instead, as
with Docker's overlay2.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from ..fsutil import remove_path
from ..mounts import mount_points_under

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8
CLONE_FS = 0x200
OVERLAY_MAX_LAYERS = 500  # the kernel's OVL_MAX_STACK
# options we turn off when this kernel knows them (see the module docstring)
_OFF_OPTIONS = ("index", "redirect_dir", "metacopy")
_PLAIN_PATH_UNSAFE = frozenset(",:\\\n")


def _sys_mount(target: str, data: str) -> None:
    if _libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _sys_umount(target: str, flags: int) -> None:
    if _libc.umount2(os.fsencode(target), flags | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def mounts_under(path: Path) -> list[str]:
    """Mount points (in this process's mount namespace) at ``path`` or below it."""
    return mount_points_under(path)


def unmount(target: Path) -> None:
    """Unmount ``target`` for sure: retry a busy mount a few times, then detach it lazily."""
    path = os.fspath(target)
    for attempt in range(5):
        if not mounts_under(target):
            return
        try:
            _sys_umount(path, 0)
            continue
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not (or no longer) a mount point
                return
            if exc.errno != errno.EBUSY:
                break
        time.sleep(0.05 * (attempt + 1))
    # A process outside our control still holds it: detach it from the tree now, and the
    # kernel frees it when the last user goes. Nothing is reachable through target afterwards.
    while mounts_under(target):
        _sys_umount(path, MNT_DETACH)


def _off_options() -> tuple[str, ...]:
    """``index=off`` and the like, for the features this kernel's overlayfs has (known once
    the module is loaded)."""
    params = Path("/sys/module/overlay/parameters")
    return tuple(f"{name}=off" for name in _OFF_OPTIONS if (params / name).exists())


def _options(lowers: Sequence[str], upper: str, work: str, extra: Sequence[str]) -> str:
    # overlayfs lists lower directories top first
    return ",".join(
        [f"lowerdir={':'.join(lowers)}", f"upperdir={upper}", f"workdir={work}", *extra]
    )


def _fits(data: str) -> bool:
    # the kernel copies one page of mount options and silently drops the rest
    return len(data.encode()) < os.sysconf("SC_PAGE_SIZE")


def _mount_from(directory: Path, target: Path, data: str) -> None:
    """mount(2) with relative paths resolved from ``directory``.

    The working directory belongs to the whole process; a short-lived thread that unshares
    it (CLONE_FS) can change its own without moving any other thread's.
    """
    failure: list[BaseException] = []

    def mount_there() -> None:
        try:
            if _libc.unshare(CLONE_FS) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), "unshare(CLONE_FS)")
            os.chdir(directory)
            _sys_mount(os.fspath(target), data)
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=mount_there, name="layerhub-overlay-mount")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def mount_overlay(
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    target: Path,
    *,
    links: Path,
    options: Sequence[str],
) -> None:
    """Mount ``lowers`` (bottom first) under ``upper`` at ``target``.

    When absolute paths would pass the one-page limit on mount options (or hold characters the
    option parser splits on), ``links`` is made to hold short symlinks ``0``, ``1``, ... ``u``,
    ``w`` to every directory, and the mount names those relative to ``links``: that takes the
    stack to the kernel's own limit of 500 layers. ``links`` is the caller's to remove.
    ``options`` are added as they are (``overlay_probe`` says which this kernel wants).
    """
    if len(lowers) > OVERLAY_MAX_LAYERS:
        raise OverflowError(
            f"{len(lowers)} layers: kernel overlayfs stacks at most {OVERLAY_MAX_LAYERS}"
        )
    top_first = [os.path.abspath(p) for p in reversed(lowers)]
    data = _options(top_first, os.path.abspath(upper), os.path.abspath(work), options)
    plain = not any(c in _PLAIN_PATH_UNSAFE for p in (*top_first, upper, work) for c in str(p))
    if plain and _fits(data):
        _sys_mount(os.fspath(target), data)
        return
    links.mkdir()
    names = [str(i) for i in range(len(top_first))]
    for name, path in zip(names, top_first, strict=True):
        os.symlink(path, links / name)
    os.symlink(os.path.abspath(upper), links / "u")
    os.symlink(os.path.abspath(work), links / "w")
    data = _options(names, "u", "w", options)
    if not _fits(data):  # cannot happen below 500 layers; said plainly if it ever does
        raise OverflowError(f"{len(lowers)} layers do not fit in one page of mount options")
    _mount_from(links, target, data)


@cache
def overlay_probe() -> tuple[str | None, tuple[str, ...]]:
    """Mount a tiny overlay (cached per process): why it failed, or None and the options
    every mount should carry."""
    root = Path(tempfile.mkdtemp(prefix="layerhub-overlay-probe-"))
    merged = root / "merged"
    try:
        for name in ("lower", "upper", "work", "merged"):
            (root / name).mkdir()
        (root / "lower" / "probe").write_bytes(b"ok")
        options: tuple[str, ...] = ()
        for attempt in range(2):  # plain first, then with the options it turns out to know
            try:
                mount_overlay(
                    [root / "lower"],
                    root / "upper",
                    root / "work",
                    merged,
                    links=root / f"links{attempt}",
                    options=options,
                )
            except OSError as exc:
                what = f" with {','.join(options)}" if options else ""
                return f"the kernel would not mount overlayfs{what} ({exc.strerror})", ()
            try:
                if (merged / "probe").read_bytes() != b"ok":
                    return "an overlayfs mount did not show its lower directory", ()
            finally:
                unmount(merged)
            # the first mount loaded the module, so its parameters now say what it knows
            options = _off_options()
        return None, options
    finally:
        if not mounts_under(merged):
            remove_path(root)
