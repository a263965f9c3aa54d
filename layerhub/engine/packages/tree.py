"""Reading an image's files as a hostile input: symlinks resolved inside the image, reads capped.

Everything goes through the union view, so a symlink is followed by looking its target up in the
image's own merged tree (an absolute target starts at the image's root, ``..`` stops at it) and
never by the host's kernel: a link to ``/etc/shadow`` reads the image's ``/etc/shadow`` or nothing.
"""

from __future__ import annotations

import os
import stat

from ..errors import InvalidPath, LayerhubError
from ..union import Entry, UnionView, join_path

# more hops than this is a loop (Linux gives up after 40 as well)
MAX_SYMLINK_HOPS = 40


class UnreadableFile(LayerhubError):
    """A file of the image that the package scan skips: missing, too big, not a regular file,
    binary where text is expected, or a symlink loop."""


def _components(path: str) -> list[str]:
    """Components of an absolute path where ``..`` climbs one level and stops at the root, as
    the kernel resolves a path inside a chroot."""
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        parts.append(name)
    return parts


def resolve(view: UnionView, path: str) -> Entry | None:
    """The entry ``path`` names in the image with every symlink on the way followed inside the
    image, or None when nothing is there; raises UnreadableFile on a symlink loop."""
    if "\x00" in path:
        return None
    pending = _components(path)
    done: list[str] = []
    hops = 0
    entry: Entry | None = None
    while pending:
        name = pending.pop(0)
        try:
            entry = view.lookup(join_path([*done, name]))
        except InvalidPath:
            return None
        if entry is None:
            return None
        if stat.S_ISLNK(entry.st.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise UnreadableFile(f"{path}: too many levels of symbolic links")
            try:
                target = os.readlink(entry.host_path)
            except OSError:
                return None
            if "\x00" in target:
                return None
            base = [] if target.startswith("/") else done
            pending = _components(join_path(base) + "/" + target) + pending
            done = []
            continue
        done.append(name)
    if entry is None:
        # the root itself
        return view.lookup("/")
    return entry


def read_file(view: UnionView, path: str, *, limit: int) -> bytes:
    """The content of the regular file ``path`` names (symlinks followed inside the image), at
    most ``limit`` bytes; raises UnreadableFile when it is missing, not a regular file or bigger."""
    entry = resolve(view, path)
    if entry is None:
        raise UnreadableFile(f"{path}: no such file")
    return read_entry(entry, limit=limit, shown=path)


def read_entry(entry: Entry, *, limit: int, shown: str | None = None) -> bytes:
    """The content of a regular file ``entry`` of the view, at most ``limit`` bytes."""
    shown = shown or entry.path
    if not stat.S_ISREG(entry.st.st_mode):
        raise UnreadableFile(f"{shown}: not a regular file")
    if entry.st.st_size > limit:
        raise UnreadableFile(f"{shown}: {entry.st.st_size} bytes, more than the {limit} read")
    try:
        # O_NOFOLLOW: the snapshot file itself, never whatever a swapped-in link points at
        fd = os.open(entry.host_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise UnreadableFile(f"{shown}: cannot open ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise UnreadableFile(f"{shown}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"{shown}: more than the {limit} bytes read")
    return data


def read_text(view: UnionView, path: str, *, limit: int) -> str:
    """A text file of the image: capped like ``read_file``, refused when it holds NUL bytes
    (binary), decoded as UTF-8 with undecodable bytes replaced."""
    return decode_text(read_file(view, path, limit=limit), path)


def decode_text(data: bytes, shown: str) -> str:
    """``data`` as text: refused when it holds NUL bytes, bad UTF-8 replaced."""
    if b"\x00" in data:
        raise UnreadableFile(f"{shown}: binary content where text was expected")
    return data.decode("utf-8", "replace")


def list_dir(view: UnionView, path: str) -> list[Entry]:
    """The merged children of the directory ``path`` names (symlinks followed inside the
    image), or an empty list when it is not a directory."""
    entry = resolve(view, path)
    if entry is None or not entry.is_dir:
        return []
    try:
        return view.listdir(entry.path)
    except LayerhubError:
        return []


__all__ = [
    "UnreadableFile",
    "decode_text",
    "list_dir",
    "read_entry",
    "read_file",
    "read_text",
    "resolve",
]
