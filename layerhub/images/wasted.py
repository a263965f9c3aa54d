"""An image's wasted space and its file tree, read from its layers' file indexes.

``image_wasted`` stacks the indexes (``layerhub.engine.wasted``) when every layer of the image
has one, and says which layers are still waiting otherwise: a partial stack would give wrong
figures (a whiteout in an unindexed layer would leave its files counted as kept), so none is
shown.

Reading and stacking an image of 100,000 index entries takes about a second (``bench/wasted.py``),
too slow for every directory of the file tree, so each process keeps the last few stacks
(bounded by their entries, CACHE_ENTRIES). A stack is keyed by its layers' LayerFiles rows (id, time
and size), which a layer's re-indexing replaces: a stale stack is never read, nothing needs
invalidating. What
other snapshots hold (the duplicated marks and bytes) changes with every pull and delete and is
asked each time, for the files shown.
"""

from __future__ import annotations

import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from layerhub.engine.errors import PathNotFound
from layerhub.engine.file_index import (
    BLOCK,
    CHAR,
    DIRECTORY,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    FileRecord,
)
from layerhub.engine.wasted import WastedCopy, WastedReport, wasted_space

from .duplicates import shared_contents
from .file_index import layer_files
from .models import Image, ImageLayer, LayerFiles

# the longest directory page of the file tree; a bigger directory gets more pages
TREE_PAGE = 500
TOP_WASTED = 20
# index entries the stacks kept in one process may hold together (about 300 bytes each)
CACHE_ENTRIES = 1_000_000

KIND_NAMES = {
    FILE: "file",
    HARDLINK: "hardlink",
    DIRECTORY: "dir",
    SYMLINK: "symlink",
    CHAR: "char",
    BLOCK: "block",
    FIFO: "fifo",
}
_TYPE_BITS = {
    FILE: stat.S_IFREG,
    HARDLINK: stat.S_IFREG,
    DIRECTORY: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    CHAR: stat.S_IFCHR,
    BLOCK: stat.S_IFBLK,
    FIFO: stat.S_IFIFO,
}


@dataclass(frozen=True)
class LayerRef:
    """A layer of the image, as the pages link to it."""

    position: int  # 0: the bottom layer
    layer_id: int
    chain_id: str
    digest: str

    @property
    def chain_hex(self) -> str:
        return self.chain_id.removeprefix("sha256:")

    @property
    def short(self) -> str:
        return self.digest.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Copy:
    """A wasted copy, with its layers named."""

    path: str  # absolute: /tmp/big
    size: int
    added_by: LayerRef
    removed_by: LayerRef
    reason: str
    links: int


@dataclass
class ImageWasted:
    """An image's wasted space, or which of its layers have no file index yet."""

    layers: list[LayerRef]
    pending: list[LayerRef]
    report: WastedReport | None = None
    duplicate_bytes: int = 0
    shared: set[bytes] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return self.report is not None

    def copy(self, wasted: WastedCopy) -> Copy:
        return Copy(
            "/" + wasted.path,
            wasted.size,
            self.layers[wasted.added_by],
            self.layers[wasted.removed_by],
            wasted.reason,
            wasted.links,
        )

    def top(self, limit: int = TOP_WASTED) -> list[Copy]:
        """The biggest wasted copies."""
        assert self.report is not None
        return [self.copy(c) for c in self.report.copies[:limit]]


def image_layer_refs(image: Image) -> list[LayerRef]:
    """The image's layers, bottom first."""
    rows = (
        ImageLayer.objects.filter(image=image)
        .order_by("position")
        .values_list("position", "layer_id", "layer__chain_id", "layer__digest")
    )
    return [LayerRef(*row) for row in rows]


def _copies(layers: list[list[FileRecord]]) -> list[tuple[int, bytes]]:
    """(size, sha256) of each copy the layers store, hardlinked names once."""
    found = []
    for records in layers:
        files = {r.path for r in records if r.kind == FILE}
        for r in records:
            content = r.kind == FILE or (r.kind == HARDLINK and r.link not in files)
            if content and r.sha256 is not None and r.size > 0:
                found.append((r.size, r.sha256))
    return found


@dataclass(frozen=True)
class _Stack:
    report: WastedReport
    contents: list[tuple[int, bytes]]  # (size, sha256) of every copy
    entries: int


# a stack's key: each layer's (layer id, LayerFiles id, indexed_at, entry count)
StackKey = tuple[tuple[object, ...], ...]
_stacks: OrderedDict[StackKey, _Stack] = OrderedDict()
_stacks_lock = threading.Lock()


def _stack(layers: list[LayerRef], index_ids: StackKey) -> _Stack:
    """The stack of ``layers``, whose LayerFiles rows ``index_ids`` name: kept, or made."""
    with _stacks_lock:
        found = _stacks.get(index_ids)
        if found is not None:
            _stacks.move_to_end(index_ids)
            return found
    records = layer_files(ref.layer_id for ref in layers)
    stacked = [records[ref.layer_id] for ref in layers]
    entries = sum(len(r) for r in stacked)
    made = _Stack(wasted_space(stacked), _copies(stacked), entries)
    with _stacks_lock:
        _stacks[index_ids] = made
        total = sum(s.entries for s in _stacks.values())
        while len(_stacks) > 1 and total > CACHE_ENTRIES:
            _, dropped = _stacks.popitem(last=False)
            total -= dropped.entries
    return made


def image_wasted(image: Image, *, duplicates: bool = True) -> ImageWasted:
    """Stack the image's file indexes: wasted space, efficiency, the final tree, and (with
    ``duplicates``) the bytes of its copies whose content another snapshot holds too."""
    layers = image_layer_refs(image)
    indexed = {
        row[0]: row
        for row in LayerFiles.objects.filter(
            layer_id__in=[ref.layer_id for ref in layers]
        ).values_list("layer_id", "pk", "indexed_at", "entry_count")
    }
    pending = [ref for ref in layers if ref.layer_id not in indexed]
    result = ImageWasted(layers=layers, pending=pending)
    if pending:
        return result
    stack = _stack(layers, tuple(indexed[ref.layer_id] for ref in layers))
    result.report = stack.report
    if duplicates:
        result.shared = shared_contents(ref.layer_id for ref in layers)
        result.duplicate_bytes = sum(size for size, sha in stack.contents if sha in result.shared)
    return result


# -- the file tree ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeRow:
    """One path of the tree: in the final tree, or only a wasted copy's (``removed``)."""

    name: str
    path: str  # absolute
    kind: str  # file, hardlink, dir, symlink, char, block, fifo; "" for a removed path
    mode: str  # as ls -l shows it
    uid: int | None
    gid: int | None
    size: int | None  # a regular file's bytes
    link: str  # a symlink's target or the name a hardlink shares its file with
    layer: LayerRef | None  # the layer providing it (None: removed)
    removed: bool
    opens: bool  # a directory (or a removed one) the tree can list
    superseded: list[Copy]  # wasted copies at this path, lowest layer first
    wasted_below: int  # bytes of wasted copies at and under this path
    duplicated: bool  # its content is held by another snapshot too
    sha256: str

    @property
    def wasted(self) -> bool:
        return bool(self.superseded) or self.wasted_below > 0


@dataclass
class TreePage:
    """One directory of the tree (a page of it), or one entry."""

    path: str
    entry: TreeRow | None  # None for /
    is_dir: bool
    rows: list[TreeRow]
    total: int
    page: int
    pages: int


class TreeIndex:
    """What the tree pages look up, built once per request from an ``ImageWasted``."""

    def __init__(self, wasted: ImageWasted) -> None:
        assert wasted.report is not None
        self.wasted = wasted
        self.report = wasted.report
        self.by_path = self.report.by_path()
        self.shared: set[bytes] = set()
        self.below: dict[str, int] = {}
        self.removed_children: dict[str, set[str]] = {}
        for copy in self.report.copies:
            path = copy.path
            while True:
                self.below[path] = self.below.get(path, 0) + copy.size
                if not path:
                    break
                parent = path.rpartition("/")[0]
                if path not in self.report.tree:
                    self.removed_children.setdefault(parent, set()).add(path)
                path = parent

    def ask_shared(self, paths: list[str]) -> None:
        """Which of these paths' contents another snapshot holds too (one query)."""
        shas = set()
        for path in paths:
            entry = self.report.tree.get(path)
            if entry is not None and entry.record.sha256 is not None:
                shas.add(entry.record.sha256)
        layer_ids = [ref.layer_id for ref in self.wasted.layers]
        self.shared = shared_contents(layer_ids, among=shas) if shas else set()

    def row(self, path: str) -> TreeRow:
        entry = self.report.tree.get(path)
        name = path.rpartition("/")[2]
        superseded = [self.wasted.copy(c) for c in self.by_path.get(path, [])]
        below = self.below.get(path, 0)
        if entry is None:
            return TreeRow(
                name=name,
                path="/" + path,
                kind="",
                mode="",
                uid=None,
                gid=None,
                size=None,
                link="",
                layer=None,
                removed=True,
                opens=path in self.removed_children,
                superseded=superseded,
                wasted_below=below,
                duplicated=False,
                sha256="",
            )
        r = entry.record
        content = r.kind in (FILE, HARDLINK)
        return TreeRow(
            name=name,
            path="/" + path,
            kind=KIND_NAMES.get(r.kind, r.kind),
            mode=stat.filemode(_TYPE_BITS.get(r.kind, 0) | r.mode),
            uid=r.uid,
            gid=r.gid,
            size=r.size if content else None,
            link=("/" + r.link if r.kind == HARDLINK else r.link),
            layer=self.wasted.layers[entry.layer],
            removed=False,
            opens=r.kind == DIRECTORY or path in self.removed_children,
            superseded=superseded,
            wasted_below=below,
            duplicated=content and r.sha256 is not None and r.sha256 in self.shared,
            sha256=r.sha256.hex() if r.sha256 else "",
        )

    def exists(self, path: str) -> bool:
        return path == "" or path in self.report.tree or path in self.below

    def is_dir(self, path: str) -> bool:
        entry = self.report.tree.get(path)
        if path == "" or (entry is not None and entry.record.kind == DIRECTORY):
            return True
        # a path that held a directory whose files were wasted (now gone, or a symlink or
        # file put in its place) lists those files
        return path in self.removed_children

    def children(self, path: str) -> list[str]:
        names = set(self.report.children.get(path, ()))
        names |= self.removed_children.get(path, set())
        return sorted(names)


def image_tree_page(wasted: ImageWasted, path: str, *, page: int = 1) -> TreePage:
    """Absolute ``path`` (normalised by the caller) of the image's stacked tree: a directory's
    entries (removed paths with wasted copies too), a page of TREE_PAGE at a time; PathNotFound
    for a path the image never held."""
    index = TreeIndex(wasted)
    rel = path.strip("/")
    if not index.exists(rel):
        raise PathNotFound(f"{path}: not in this image")
    if not index.is_dir(rel):
        index.ask_shared([rel])
        return TreePage(path, index.row(rel), False, [], 0, 1, 1)
    entry = index.row(rel) if rel else None
    names = index.children(rel)
    pages = max(1, -(-len(names) // TREE_PAGE))
    page = min(max(1, page), pages)
    start = (page - 1) * TREE_PAGE
    shown = names[start : start + TREE_PAGE]
    index.ask_shared([rel, *shown])
    rows = [index.row(name) for name in shown]
    return TreePage(path, entry, True, rows, len(names), page, pages)
