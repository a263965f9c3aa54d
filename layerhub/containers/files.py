"""Reading a container's files from wherever the request is served.

A container's writable layer is on its host's disk. Pages and the API read its files through
``container_files``: on the container's host, the union view itself; elsewhere a
``RemoteView`` with the same reading methods (``lstat``, ``lookup``, ``listdir``, ``open``...)
whose every answer is a short call to the host (layerhub.hosts.calls), so the file browser,
the downloads and the API listings are one code whatever the host.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from layerhub.containers.models import Container
from layerhub.containers.services import container_dir, container_fs, container_here
from layerhub.core.store import get_store
from layerhub.engine import fsutil
from layerhub.engine.errors import InvalidPath, PathNotFound
from layerhub.engine.runtime import runtime_unavailable_reason
from layerhub.engine.union import Entry, UnionView, split_path
from layerhub.hosts.calls import host_call, host_operation
from layerhub.hosts.models import current_host
from layerhub.hosts.remote_file import chunk_decode, chunk_encode, remote_reader

# a listing of more entries than this is cut (the pages show 2,000 at most)
MAX_REMOTE_ENTRIES = 20000


@dataclass(frozen=True)
class RemoteEntry(Entry):
    """An entry of a container on another host: its lstat, and a symlink's target (the file
    itself is not here to read)."""

    link_target: str = ""


def _entry_json(entry: Entry) -> dict[str, Any]:
    st = entry.st
    return {
        "path": entry.path,
        "layer": entry.layer,
        "st": [int(st[i]) for i in range(10)],
        "target": os.readlink(entry.host_path) if stat.S_ISLNK(st.st_mode) else "",
    }


def _entry_from(data: dict[str, Any]) -> RemoteEntry:
    st = os.stat_result(tuple(int(v) for v in data["st"]))
    return RemoteEntry(
        path=str(data["path"]),
        host_path=Path("/nonexistent-remote-entry"),
        layer=int(data["layer"]),
        st=st,
        link_target=str(data.get("target", "")),
    )


def _read_remote(container: Container, path: str, offset: int, length: int) -> bytes:
    text = host_call(
        container.host,
        "container.read",
        container=container.container_id,
        path=path,
        offset=offset,
        length=length,
    )
    return chunk_decode(text)


class RemoteView:
    """The reading half of a UnionView, for a container on another host."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def _call(self, op: str, **params: Any) -> Any:
        return host_call(self.container.host, op, container=self.container.container_id, **params)

    def lookup(self, path: str) -> RemoteEntry | None:
        """The entry at ``path``, or None."""
        split_path(path)  # refused here as locally
        found = self._call("container.lookup", path=path)
        return None if found is None else _entry_from(found)

    def lstat(self, path: str) -> RemoteEntry:
        """The entry at ``path``; raises PathNotFound."""
        entry = self.lookup(path)
        if entry is None:
            raise PathNotFound(f"{path}: no such file or directory")
        return entry

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        return self.lookup(path) is not None

    def listdir(self, path: str = "/") -> list[RemoteEntry]:
        """A directory's entries, sorted by name."""
        return [_entry_from(item) for item in self._call("container.listdir", path=path)]

    def open(self, path: str) -> BinaryIO:
        """A regular file, read from the host as it is consumed."""
        entry = self.lstat(path)
        if not stat.S_ISREG(entry.st.st_mode):
            raise InvalidPath(f"{path}: not a regular file")
        return remote_reader(partial(_read_remote, self.container, path), entry.st.st_size)

    def read_bytes(self, path: str) -> bytes:
        """A regular file's content."""
        with self.open(path) as f:
            return f.read()

    def readlink(self, path: str) -> str:
        """A symlink's target, as stored."""
        entry = self.lstat(path)
        if not stat.S_ISLNK(entry.st.st_mode):
            raise InvalidPath(f"{path}: not a symlink")
        return entry.link_target


@dataclass(frozen=True)
class ContainerFiles:
    """What pages read of a container: its merged files (``view``), the index of its own
    (writable) layer in that view, its writable layer's bytes and files, and why commands
    cannot run on its host (None when they can)."""

    view: UnionView | RemoteView
    own_layer: int
    writable_bytes: int
    writable_files: int
    runtime_reason: str | None


def container_files(container: Container) -> ContainerFiles:
    """The container's files, read on its host (see the module's note)."""
    if container.host == current_host():
        fs = container_fs(container)
        upper = container_dir(container) / "upper"
        used = fsutil.tree_usage(upper) if upper.is_dir() else (0, 0)
        return ContainerFiles(
            fs.view,
            len(fs.lowers),
            used[0],
            used[1],
            runtime_unavailable_reason(get_store().whiteouts),
        )
    summary = host_call(container.host, "container.summary", container=container.container_id)
    return ContainerFiles(
        RemoteView(container),
        int(summary["own_layer"]),
        int(summary["writable_bytes"]),
        int(summary["writable_files"]),
        summary["runtime_reason"],
    )


# -- what the container's host answers ----------------------------------------------------------


@host_operation("container.summary")
def _summary_here(*, container: str) -> dict[str, Any]:
    files = container_files(container_here(container))
    return {
        "own_layer": files.own_layer,
        "writable_bytes": files.writable_bytes,
        "writable_files": files.writable_files,
        "runtime_reason": files.runtime_reason,
    }


@host_operation("container.lookup")
def _lookup_here(*, container: str, path: str) -> dict[str, Any] | None:
    entry = container_fs(container_here(container)).view.lookup(path)
    return None if entry is None else _entry_json(entry)


@host_operation("container.listdir")
def _listdir_here(*, container: str, path: str) -> list[dict[str, Any]]:
    children = container_fs(container_here(container)).view.listdir(path)
    return [_entry_json(child) for child in children[:MAX_REMOTE_ENTRIES]]


@host_operation("container.read")
def _read_here(*, container: str, path: str, offset: int, length: int) -> str:
    with container_fs(container_here(container)).view.open(path) as f:
        return chunk_encode(f, offset, length)
