"""The union view: a stack of layer directories seen as one tree, the way overlayfs merges them.

- the top-most layer holding a path wins;
- a whiteout hides that path in every layer below it;
- an opaque directory hides the children the same directory has in the layers below;
- a directory merges with directories of the same path below it, until a layer holds a
  non-directory there (or a whiteout, or the directory is opaque);
- a symlink is never followed (the view answers lstat, as ``docker diff`` and tar do).

Layers are given bottom first, like an image's ``rootfs.diff_ids``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from .errors import InvalidPath, PathNotFound
from .whiteouts import WHITEOUT_PREFIX, WhiteoutFormat


@dataclass(frozen=True)
class Entry:
    """One path of the merged tree: where it comes from and its lstat."""

    path: str  # absolute, in the image: "/etc/passwd"
    host_path: Path  # the file in the layer that provides it
    layer: int  # index of that layer, bottom first
    st: os.stat_result

    @property
    def is_dir(self) -> bool:
        """Whether it is a directory."""
        return stat.S_ISDIR(self.st.st_mode)

    @property
    def kind(self) -> str:
        """``file``, ``dir``, ``symlink``, ``char``, ``block``, ``fifo`` or ``socket``."""
        return file_kind(self.st.st_mode)


def file_kind(mode: int) -> str:
    """A short name for a file type."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "dir"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
        (stat.S_ISFIFO, "fifo"),
    ):
        if test(mode):
            return name
    return "socket"


def split_path(path: str) -> list[str]:
    """Components of an absolute image path; ``..`` is refused rather than resolved."""
    if not path.startswith("/"):
        raise InvalidPath(f"path must be absolute: {path!r}")
    if "\x00" in path:
        raise InvalidPath(f"path must not contain a NUL byte: {path!r}")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidPath(f"path must not contain '..': {path!r}")
    return parts


def join_path(parts: Sequence[str]) -> str:
    """The absolute image path of some components."""
    return "/" + "/".join(parts)


class FileView(Protocol):
    """What reading a merged tree needs: a UnionView, or a stand-in answering for a tree on
    another machine (a container on another host)."""

    def lookup(self, path: str) -> Entry | None:
        """The entry at ``path``, or None."""

    def lstat(self, path: str) -> Entry:
        """The entry at ``path``; raises PathNotFound."""

    def listdir(self, path: str = "/") -> Sequence[Entry]:
        """A directory's entries."""

    def open(self, path: str) -> BinaryIO:
        """A regular file, for reading."""


class UnionView:
    """Read-only merged view of layer directories (bottom first)."""

    def __init__(self, layers: Sequence[Path], whiteouts: WhiteoutFormat) -> None:
        if not layers:
            raise ValueError("a union view needs at least one layer")
        self.layers = [Path(p) for p in layers]
        self.fmt = whiteouts
        self._top_first = list(range(len(self.layers) - 1, -1, -1))

    # -- lookup ------------------------------------------------------------------------------

    def _whited_out(self, layer_dir: Path, name: str, st: os.stat_result | None) -> bool:
        if st is not None:
            return self.fmt.whiteout_target(name, st) is not None
        # oci form: the marker is a sibling file
        return os.path.lexists(layer_dir / (WHITEOUT_PREFIX + name))

    def _step(self, layers: list[int], rel: str, name: str) -> tuple[Entry | None, list[int]]:
        """Find ``name`` inside directory ``rel`` given the layers that merge into it."""
        found: Entry | None = None
        below: list[int] = []
        child_rel = f"{rel}/{name}" if rel else name
        for idx in layers:
            layer_dir = self.layers[idx] / rel if rel else self.layers[idx]
            host = layer_dir / name
            try:
                st: os.stat_result | None = os.lstat(host)
            except FileNotFoundError:
                st = None
            except NotADirectoryError:
                st = None
            if st is None or self.fmt.whiteout_target(name, st) is not None:
                if self._whited_out(layer_dir, name, st):
                    break
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if found is None:
                found = Entry("/" + child_rel, host, idx, st)
                if not is_dir:
                    break
            elif not is_dir:
                break
            below.append(idx)
            # a directory written over a whiteout in the same layer also hides what is below
            if self.fmt.is_opaque(host) or os.path.lexists(layer_dir / (WHITEOUT_PREFIX + name)):
                break
        return found, below

    def _resolve(self, parts: Sequence[str]) -> tuple[Entry | None, list[int]]:
        layers = list(self._top_first)
        rel = ""
        entry: Entry | None = Entry(
            "/", self.layers[-1], len(self.layers) - 1, os.lstat(self.layers[-1])
        )
        for name in parts:
            assert entry is not None
            if not entry.is_dir or self.fmt.is_marker(name):
                return None, []
            entry, layers = self._step(layers, rel, name)
            if entry is None:
                return None, []
            rel = f"{rel}/{name}" if rel else name
        return entry, layers

    def lookup(self, path: str) -> Entry | None:
        """The entry at ``path``, or None if the merged tree has nothing there."""
        return self._resolve(split_path(path))[0]

    def lstat(self, path: str) -> Entry:
        """The entry at ``path``; raises PathNotFound."""
        entry = self.lookup(path)
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        return entry

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists in the merged tree."""
        return self.lookup(path) is not None

    # -- directories -------------------------------------------------------------------------

    def _children(self, layers: list[int], rel: str) -> list[tuple[Entry, list[int]]]:
        """Merged children of directory ``rel``, each with the layers merging into it."""
        found: dict[str, Entry] = {}
        open_dirs: dict[str, list[int]] = {}  # names still merging with lower layers
        closed: set[str] = set()
        for idx in layers:
            layer_dir = self.layers[idx] / rel if rel else self.layers[idx]
            try:
                scan = list(os.scandir(layer_dir))
            except (FileNotFoundError, NotADirectoryError):
                continue
            hidden_here: set[str] = set()
            for item in scan:
                name = item.name
                st = item.stat(follow_symlinks=False)
                target = self.fmt.whiteout_target(name, st)
                if target is not None:
                    hidden_here.add(target)
                    continue
                if self.fmt.is_marker(name) or name in closed:
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if name not in found:
                    found[name] = Entry(
                        "/" + (f"{rel}/{name}" if rel else name), Path(item.path), idx, st
                    )
                    if is_dir:
                        open_dirs[name] = [idx]
                        if self.fmt.is_opaque(Path(item.path)):
                            closed.add(name)
                    else:
                        closed.add(name)
                elif is_dir and name in open_dirs:
                    open_dirs[name].append(idx)
                    if self.fmt.is_opaque(Path(item.path)):
                        closed.add(name)
                else:
                    closed.add(name)
            # whiteouts hide only what lies below their own layer
            closed |= hidden_here
        return [(found[n], open_dirs.get(n, [])) for n in sorted(found)]

    def listdir(self, path: str = "/") -> list[Entry]:
        """The merged children of a directory, sorted by name."""
        entry, layers = self._resolve(split_path(path))
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        if not entry.is_dir:
            raise InvalidPath(f"{path}: not a directory")
        return [child for child, _ in self._children(layers, entry.path.strip("/"))]

    def walk(self, path: str = "/") -> Iterator[Entry]:
        """Every entry below ``path`` (not ``path`` itself), parents before children, sorted."""
        entry, layers = self._resolve(split_path(path))
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        if not entry.is_dir:
            return
        # pre-order, names sorted at each level: the order tar and `docker diff` list paths in
        stack = [iter(self._children(layers, entry.path.strip("/")))]
        while stack:
            try:
                child, child_layers = next(stack[-1])
            except StopIteration:
                stack.pop()
                continue
            yield child
            if child.is_dir:
                stack.append(iter(self._children(child_layers, child.path.strip("/"))))

    # -- contents ------------------------------------------------------------------------------

    def open(self, path: str) -> BinaryIO:
        """Open a regular file for reading."""
        entry = self.lstat(path)
        if not stat.S_ISREG(entry.st.st_mode):
            raise InvalidPath(f"{path}: not a regular file")
        return open(entry.host_path, "rb")

    def read_bytes(self, path: str) -> bytes:
        """A regular file's content."""
        with self.open(path) as f:
            return f.read()

    def readlink(self, path: str) -> str:
        """A symlink's target, as stored."""
        entry = self.lstat(path)
        if not stat.S_ISLNK(entry.st.st_mode):
            raise InvalidPath(f"{path}: not a symlink")
        return os.readlink(entry.host_path)
