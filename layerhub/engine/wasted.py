"""Wasted space of an image, as dive reports it, counted exactly.

Given an image's layers' file indexes (``FileRecord`` lists, bottom layer first), stack them the
way a union filesystem does and account for every regular file's bytes:

- a **copy** is a regular file's content as one layer stores it. Names that share an inode in
  that layer (hardlinks: one ``f`` record and the ``h`` records whose ``link`` names it) are
  one copy, whose bytes count once.
- a copy is **wasted** when a later layer leaves none of its names visible: each name is
  *replaced* (the later layer writes the same path, whatever it writes there, even the same
  bytes), *deleted* (a whiteout of the path), gone with its *parent deleted* (a whiteout of a
  directory above it), *hidden* by an opaque directory above it, or gone with its *parent
  replaced* (a later layer puts a non-directory where a directory above it was). It is counted
  once, with the layer that added it and the layer that took away its last visible name.
- a layer's whiteouts and opaque markers apply to the layers below it only, never to the
  layer's own files (a layer's tar cannot delete what it adds).

So a file added and later removed counts once; a file written in three layers counts its two
superseded copies, each once; a directory removed counts each file under it once. Every copy
is either visible in the final tree (``kept``) or wasted: ``total == kept + wasted``, and the
efficiency score is ``kept / total`` (1.0 for an image with no content).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .file_index import DIRECTORY, FILE, HARDLINK, OPAQUE, WHITEOUT, FileRecord

# why a copy's last name went (the ``reason`` of a WastedCopy)
REPLACED = "replaced"
DELETED = "deleted"
PARENT_DELETED = "parent deleted"
HIDDEN = "hidden by opaque directory"
PARENT_REPLACED = "parent replaced"


@dataclass(frozen=True, slots=True)
class WastedCopy:
    """A superseded copy of a file: its bytes are stored but no name of them is visible."""

    path: str  # the copy's name (the regular file's name when hardlinks shared it)
    size: int
    added_by: int  # index of the layer that stored the copy (0: the bottom layer)
    removed_by: int  # index of the layer that took away its last visible name
    reason: str
    links: int = 1  # how many names shared the copy in its layer


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """A path of the final tree: its record and the index of the layer that provides it."""

    record: FileRecord
    layer: int


@dataclass
class WastedReport:
    """What ``wasted_space`` finds (sizes in bytes)."""

    layer_count: int
    total: int  # content bytes of all copies in all layers
    wasted: int  # bytes of the copies no name of which is visible in the final tree
    copies: list[WastedCopy]  # the wasted copies, biggest first
    tree: dict[str, TreeEntry]  # the final tree, path -> entry
    children: dict[str, list[str]]  # directory path ("" is /) -> child paths in the tree
    layer_totals: list[int] = field(default_factory=list)  # content bytes per layer
    layer_wasted: list[int] = field(default_factory=list)  # wasted bytes each layer added

    @property
    def kept(self) -> int:
        """Content bytes visible in the final tree (each copy once)."""
        return self.total - self.wasted

    @property
    def efficiency(self) -> float:
        """dive's score, exactly: the share of stored content bytes the final tree shows."""
        return self.kept / self.total if self.total else 1.0

    @property
    def efficiency_percent(self) -> float:
        """The score as a percentage, as dive prints it."""
        return 100.0 * self.efficiency

    def by_path(self) -> dict[str, list[WastedCopy]]:
        """The wasted copies by their path, lowest layer first."""
        found: dict[str, list[WastedCopy]] = {}
        for copy in sorted(self.copies, key=lambda c: c.added_by):
            found.setdefault(copy.path, []).append(copy)
        return found


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class _Stack:
    """The union of the layers applied so far, with a children index so that removing a
    directory touches only what is under it."""

    def __init__(self) -> None:
        self.tree: dict[str, TreeEntry] = {}
        self.children: dict[str, set[str]] = {}
        self.group_of: dict[str, tuple[int, str]] = {}  # a content name -> its copy
        self.names: dict[tuple[int, str], set[str]] = {}  # a copy -> its visible names
        self.sizes: dict[tuple[int, str], int] = {}
        self.links: dict[tuple[int, str], int] = {}  # a copy -> how many names it had
        self.copies: list[WastedCopy] = []

    def put(self, record: FileRecord, layer: int, group: tuple[int, str] | None) -> None:
        self.tree[record.path] = TreeEntry(record, layer)
        self.children.setdefault(_parent(record.path), set()).add(record.path)
        if group is not None:
            self.group_of[record.path] = group
            self.names.setdefault(group, set()).add(record.path)

    def drop(self, path: str, layer: int, reason: str) -> None:
        """Remove ``path`` (not what is under it) from the tree."""
        if self.tree.pop(path, None) is None:
            return
        siblings = self.children.get(_parent(path))
        if siblings is not None:
            siblings.discard(path)
        group = self.group_of.pop(path, None)
        if group is None:
            return
        names = self.names[group]
        names.discard(path)
        if not names:
            del self.names[group]
            self.copies.append(
                WastedCopy(group[1], self.sizes[group], group[0], layer, reason, self.links[group])
            )

    def drop_below(self, path: str, layer: int, reason: str) -> None:
        """Remove everything under directory ``path`` (iteratively: trees can be deep)."""
        stack = [path]
        while stack:
            below = self.children.pop(stack.pop(), set())
            for child in sorted(below):
                stack.append(child)
                self.drop(child, layer, reason)


def wasted_space(layers: Sequence[Sequence[FileRecord]]) -> WastedReport:
    """Stack ``layers`` (each layer's own records, bottom layer first) and count the bytes of
    regular-file copies that no later name keeps visible (see the module's definition)."""
    stack = _Stack()
    layer_totals: list[int] = []
    for index, records in enumerate(layers):
        # the copies this layer stores: a regular file and every hardlink to it are one
        files = {r.path: r for r in records if r.kind == FILE}
        groups: dict[str, tuple[int, str]] = {}
        total = 0
        for record in records:
            if record.kind == FILE:
                key = (index, record.path)
            elif record.kind == HARDLINK:
                target = files.get(record.link)
                # a link whose file this layer does not hold is a copy of its own
                key = (index, record.link if target is not None else record.path)
            else:
                continue
            groups[record.path] = key
            if key not in stack.sizes:
                stack.sizes[key] = record.size
                total += record.size
            stack.links[key] = stack.links.get(key, 0) + 1
        layer_totals.append(total)

        # first what this layer deletes below it: whiteouts, then opaque directories
        for record in records:
            if record.kind == WHITEOUT and record.path:
                stack.drop_below(record.path, index, PARENT_DELETED)
                stack.drop(record.path, index, DELETED)
        for record in records:
            if record.kind == OPAQUE and record.path:
                stack.drop_below(record.path, index, HIDDEN)
        # then what it writes, each path over what the layers below had there
        for record in records:
            if record.kind in (WHITEOUT, OPAQUE):
                continue
            below = stack.tree.get(record.path)
            if below is not None and below.layer < index:
                if below.record.kind == DIRECTORY and record.kind != DIRECTORY:
                    stack.drop_below(record.path, index, PARENT_REPLACED)
                stack.drop(record.path, index, REPLACED)
            stack.put(record, index, groups.get(record.path))

    copies = sorted(stack.copies, key=lambda c: (-c.size, c.path, c.added_by))
    layer_wasted = [0] * len(layers)
    for copy in copies:
        layer_wasted[copy.added_by] += copy.size
    return WastedReport(
        layer_count=len(layers),
        total=sum(layer_totals),
        wasted=sum(c.size for c in copies),
        copies=copies,
        tree=stack.tree,
        children={k: sorted(v) for k, v in stack.children.items() if v},
        layer_totals=layer_totals,
        layer_wasted=layer_wasted,
    )
