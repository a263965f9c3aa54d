"""How a snapshot or writable layer records deletions: the one adapter that knows.

Layer tars say "deleted" with a ``.wh.<name>`` file and "opaque" (hide the lower directory's
children) with a ``.wh..wh..opq`` file. On disk a store keeps one of two forms, chosen once:

- ``oci``: the markers stay plain files, exactly as in the tar. Needs no privilege; the union view
  is computed in Python; a kernel cannot mount it.
- ``overlay``: overlayfs' own form, as Docker's overlay2 converts at unpack time: a deleted path
  is a 0:0 character device, an opaque directory carries ``trusted.overlay.opaque=y``. Needs
  root (mknod, trusted xattrs); the snapshots can be kernel overlay lower directories as they are.

Union view, diff and commit ask only ``whiteout_target`` and ``is_opaque``, so they read both.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path
from typing import Union

# paths are plain strings on the unpack hot path, Path objects elsewhere
StrPath = Union[str, "os.PathLike[str]"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
# xattrs that would let a layer forge overlay metadata; never copied from or into a tar.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


class WhiteoutFormat:
    """The interface: how deletions and opaque directories are written and recognised."""

    name = ""

    def whiteout_target(self, name: str, st: os.stat_result) -> str | None:
        """If the directory entry ``name`` (with lstat ``st``) is a whiteout, the name it hides."""
        raise NotImplementedError

    def is_marker(self, name: str) -> bool:
        """Whether ``name`` is bookkeeping to skip when listing (never a real entry)."""
        raise NotImplementedError

    def whiteout_entry(self, name: str) -> str:
        """The name of the directory entry ``write_whiteout`` makes for ``name``."""
        raise NotImplementedError

    def is_opaque(self, directory: StrPath) -> bool:
        """Whether ``directory`` hides the children of the same directory in lower layers."""
        raise NotImplementedError

    def write_whiteout(self, directory: StrPath, name: str) -> None:
        """Record that ``directory/name`` is deleted (whatever was there in this layer goes)."""
        raise NotImplementedError

    def write_opaque(self, directory: StrPath) -> None:
        """Mark an existing ``directory`` opaque."""
        raise NotImplementedError


class OciWhiteouts(WhiteoutFormat):
    """Markers kept as the plain files the tar carries."""

    name = "oci"

    def whiteout_target(self, name: str, st: os.stat_result) -> str | None:
        if name.startswith(WHITEOUT_PREFIX) and name != OPAQUE_MARKER:
            return name[len(WHITEOUT_PREFIX) :]
        return None

    def is_marker(self, name: str) -> bool:
        return name.startswith(WHITEOUT_PREFIX)

    def whiteout_entry(self, name: str) -> str:
        return WHITEOUT_PREFIX + name

    def is_opaque(self, directory: StrPath) -> bool:
        return os.path.lexists(os.path.join(directory, OPAQUE_MARKER))

    def write_whiteout(self, directory: StrPath, name: str) -> None:
        from .fsutil import remove_path

        remove_path(os.path.join(directory, name))
        fd = os.open(
            os.path.join(directory, WHITEOUT_PREFIX + name),
            os.O_WRONLY | os.O_CREAT,
            0o644,
        )
        os.close(fd)

    def write_opaque(self, directory: StrPath) -> None:
        fd = os.open(os.path.join(directory, OPAQUE_MARKER), os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)


class OverlayWhiteouts(WhiteoutFormat):
    """overlayfs' form: 0:0 character devices and the opaque xattr."""

    name = "overlay"

    def __init__(self, opaque_xattr: str = OVERLAY_OPAQUE_XATTR) -> None:
        self.opaque_xattr = opaque_xattr

    def whiteout_target(self, name: str, st: os.stat_result) -> str | None:
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return name
        return None

    def is_marker(self, name: str) -> bool:
        return False

    def whiteout_entry(self, name: str) -> str:
        return name

    def is_opaque(self, directory: StrPath) -> bool:
        try:
            return os.getxattr(directory, self.opaque_xattr, follow_symlinks=False) == b"y"
        except OSError:
            return False

    def write_whiteout(self, directory: StrPath, name: str) -> None:
        from .fsutil import remove_path

        target = os.path.join(directory, name)
        remove_path(target)
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(0, 0))

    def write_opaque(self, directory: StrPath) -> None:
        os.setxattr(directory, self.opaque_xattr, b"y", follow_symlinks=False)


FORMATS: dict[str, type[WhiteoutFormat]] = {"oci": OciWhiteouts, "overlay": OverlayWhiteouts}


def format_named(name: str) -> WhiteoutFormat:
    """The adapter for a store's recorded form."""
    try:
        return FORMATS[name]()
    except KeyError:
        raise ValueError(f"unknown whiteout form {name!r} (known: oci, overlay)") from None


def overlay_supported(directory: Path) -> bool:
    """Whether this process can write overlay whiteouts in ``directory``'s filesystem."""
    probe = directory / f".probe-{uuid.uuid4().hex}"
    try:
        os.mknod(probe, 0o600 | stat.S_IFCHR, os.makedev(0, 0))
        os.unlink(probe)
        probe.mkdir()
        os.setxattr(probe, OVERLAY_OPAQUE_XATTR, b"y")
        return os.getxattr(probe, OVERLAY_OPAQUE_XATTR) == b"y"
    except OSError:
        return False
    finally:
        if probe.is_dir():
            probe.rmdir()
        elif os.path.lexists(probe):
            probe.unlink()


def default_format(directory: Path) -> WhiteoutFormat:
    """Overlay when the host allows it (root on a filesystem with trusted xattrs), else oci."""
    return OverlayWhiteouts() if overlay_supported(directory) else OciWhiteouts()
