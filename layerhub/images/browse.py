"""What a file browser shows at one path of a tree: computed where the tree is, as JSON-able
data (``Browse``), and rendered by the page or the API answer that asked.

An image's or a layer's files are read on a host that holds their snapshots
(``layerhub.images.snapshot_files``), a container's on its host: each computes a ``Browse``
with the same functions here, over a union view of its own disk. Every path is hostile: it is
only ever looked up through the engine's view, which refuses ``..``, a NUL byte and relative
paths and never follows a symlink, so nothing outside a tree is opened.
"""

from __future__ import annotations

import codecs
import os
import stat
from dataclasses import asdict, dataclass
from typing import Any

from layerhub.core.store import get_store
from layerhub.engine.errors import InvalidPath
from layerhub.engine.union import Entry, FileView, UnionView, join_path, split_path

# what a page shows of a file: past this it says so and offers the download
TEXT_CAP = 256 * 1024
# the longest directory listing one page shows (a directory of 100,000 files still renders)
LIST_CAP = 2000


def clean_path(raw: str | None) -> str:
    """The absolute image path asked for (``/`` by default), normalised; InvalidPath (a 400
    page) for ``..``, a NUL byte or a relative path."""
    path = (raw or "/").strip() or "/"
    return join_path(split_path(path))


@dataclass(frozen=True)
class FileContent:
    """What the page shows of a regular file: its text (up to the cap) or that it is binary."""

    size: int
    text: str | None  # None: binary
    truncated: bool


def read_file_content(view: FileView, entry: Entry) -> FileContent:
    """The first TEXT_CAP bytes of the regular file ``entry``, decoded if they are UTF-8."""
    with view.open(entry.path) as f:
        head = f.read(TEXT_CAP + 1)
    truncated = len(head) > TEXT_CAP
    head = head[:TEXT_CAP]
    if b"\x00" in head[:8192]:
        return FileContent(entry.st.st_size, None, truncated)
    try:
        # a cut at the cap may split a character: decode incrementally, not as final
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=not truncated)
    except UnicodeDecodeError:
        return FileContent(entry.st.st_size, None, truncated)
    return FileContent(entry.st.st_size, text, truncated)


@dataclass(frozen=True)
class Row:
    """One line of a directory listing (or the entry a page shows)."""

    name: str
    path: str
    kind: str  # file, dir, symlink, char, block, fifo, socket, or "" for a deleted path
    size: int | None
    mode: str
    target: str  # a symlink's target, as stored
    mark: str  # A, C, D, W, or "" (unchanged, in a merged view)


def entry_row(entry: Entry, mark: str = "") -> Row:
    """A listing row for an entry of a union view."""
    st = entry.st
    target = ""
    if stat.S_ISLNK(st.st_mode):
        # an entry read on another host (a container's) carries its target with it
        target = getattr(entry, "link_target", "") or os.readlink(entry.host_path)
    return Row(
        name=entry.path.rsplit("/", 1)[1],
        path=entry.path,
        kind=entry.kind,
        size=st.st_size if stat.S_ISREG(st.st_mode) else None,
        mode=stat.filemode(st.st_mode),
        target=target,
        mark=mark,
    )


@dataclass(frozen=True)
class Browse:
    """One path of a tree as a file browser shows it: its entry, and a directory's rows (at
    most LIST_CAP of ``total``) or a regular file's content (when asked for). For a layer's
    own changes, whether the directory is opaque and whether the layers below were unknown
    (a changed path then shows as added)."""

    path: str
    entry: Row
    rows: list[Row] | None  # None: not a directory
    total: int = 0
    content: FileContent | None = None
    opaque: bool = False
    lower_unknown: bool = False

    @property
    def is_dir(self) -> bool:
        return self.rows is not None

    @property
    def capped(self) -> bool:
        return self.rows is not None and self.total > len(self.rows)

    def to_json(self) -> dict[str, Any]:
        """What a host answers (layerhub.hosts.calls carries JSON)."""
        return {
            "path": self.path,
            "entry": asdict(self.entry),
            "rows": None if self.rows is None else [asdict(row) for row in self.rows],
            "total": self.total,
            "content": None if self.content is None else asdict(self.content),
            "opaque": self.opaque,
            "lower_unknown": self.lower_unknown,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Browse:
        """The ``Browse`` a host answered with ``to_json``."""
        rows = data["rows"]
        content = data["content"]
        return cls(
            path=str(data["path"]),
            entry=Row(**data["entry"]),
            rows=None if rows is None else [Row(**row) for row in rows],
            total=int(data["total"]),
            content=None if content is None else FileContent(**content),
            opaque=bool(data["opaque"]),
            lower_unknown=bool(data["lower_unknown"]),
        )


def _leaf(view: FileView, entry: Entry, *, content: bool) -> Browse:
    """A path that is not a directory: its entry, and a regular file's content if asked."""
    shown = read_file_content(view, entry) if content and stat.S_ISREG(entry.st.st_mode) else None
    return Browse(entry.path, entry_row(entry), None, content=shown)


def tree_browse(
    view: FileView, path: str, *, own_layer: int | None = None, content: bool = True
) -> Browse:
    """``path`` in the merged tree ``view``: a directory's entries (capped), or a file's
    content (``content``). Entries that come from layer ``own_layer`` (a container's writable
    layer) are marked ``W``."""
    path = clean_path(path)
    entry = view.lstat(path)
    if not entry.is_dir:
        return _leaf(view, entry, content=content)
    children = view.listdir(path)
    rows = [
        entry_row(child, "W" if child.layer == own_layer else "") for child in children[:LIST_CAP]
    ]
    return Browse(path, entry_row(entry), rows, len(children))


def layer_changes(
    snapshot: UnionView, lower: UnionView | None, path: str
) -> tuple[list[Row], int, bool]:
    """The layer's own entries in directory ``path``: what it adds (A), what it replaces in a
    lower layer (C), and what it deletes (D: whiteouts, and the lower children an opaque
    directory hides); at most LIST_CAP of them, their count, and whether the directory is
    opaque. Reads this one directory of the snapshot and of the lower view."""
    fmt = get_store().whiteouts
    entry = snapshot.lstat(path)
    if not entry.is_dir:
        raise InvalidPath(f"{path}: not a directory")
    lower_names: set[str] = set()
    lower_children: list[Entry] = []
    if lower is not None:
        below = lower.lookup(path)
        if below is not None and below.is_dir:
            lower_children = lower.listdir(path)
            lower_names = {child.path.rsplit("/", 1)[1] for child in lower_children}
    opaque = fmt.is_opaque(entry.host_path) and path != "/"
    rows: dict[str, Row] = {}
    with os.scandir(entry.host_path) as scan:
        items = sorted(scan, key=lambda item: item.name)
    for item in items:
        st = item.stat(follow_symlinks=False)
        target = fmt.whiteout_target(item.name, st)
        if target is not None:
            child = join_path([*split_path(path), target])
            rows.setdefault(target, Row(target, child, "", None, "", "", "D"))
            continue
        if fmt.is_marker(item.name):
            continue  # the OCI opaque marker: shown as the directory's note
        child = join_path([*split_path(path), item.name])
        found = Entry(child, entry.host_path / item.name, 0, st)
        rows[item.name] = entry_row(found, "C" if item.name in lower_names else "A")
    if opaque:
        for hidden in lower_children:
            name = hidden.path.rsplit("/", 1)[1]
            if name not in rows:
                rows[name] = Row(name, hidden.path, "", None, "", "", "D")
    ordered = [rows[name] for name in sorted(rows)]
    return ordered[:LIST_CAP], len(ordered), opaque


def layer_browse(
    snapshot: UnionView,
    lower: UnionView | None,
    path: str,
    *,
    lower_unknown: bool,
    content: bool = True,
) -> Browse:
    """``path`` in one layer's ``snapshot``: a directory's own changes over ``lower`` (the
    layers below, merged; None for a base layer, or when they are not known:
    ``lower_unknown``), or a file's content (``content``)."""
    path = clean_path(path)
    entry = snapshot.lstat(path)
    if not entry.is_dir:
        return _leaf(snapshot, entry, content=content)
    rows, total, opaque = layer_changes(snapshot, lower, path)
    return Browse(path, entry_row(entry), rows, total, opaque=opaque, lower_unknown=lower_unknown)
