"""The layer page (one layer's own changes, A/C/D, a directory at a time) and an image's
merged files, browsable. Every path comes from the query string and is hostile: it is only
ever looked up through the engine's union view, which refuses ``..`` and never follows a
symlink, so nothing outside a layer's tree is opened."""

from __future__ import annotations

import codecs
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.http import FileResponse, Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import urlencode

from layerhub.containers.services import image_lowers
from layerhub.core.permissions import named_by, restrict
from layerhub.core.store import get_store
from layerhub.engine.errors import InvalidPath
from layerhub.engine.reference import Reference
from layerhub.engine.union import Entry, FileView, UnionView, join_path, split_path
from layerhub.images.listing import readable_tags
from layerhub.images.models import Image, ImageLayer, Layer, Repository

# what a page shows of a file: past this it says so and offers the download
TEXT_CAP = 256 * 1024
# the longest directory listing one page shows (a directory of 100,000 files still renders)
LIST_CAP = 2000
IMAGES_PER_PAGE = 50
_CHAIN_HEX = re.compile(r"[a-f0-9]{64}")


# -- shared with the container pages ------------------------------------------------------------


def with_tags(
    queryset: QuerySet[Image], repositories: QuerySet[Repository] | None = None
) -> QuerySet[Image]:
    """``queryset`` with the tags ``display_name`` reads, in one more query for any number:
    only those of ``repositories`` (the ones the user sees, ``named_by``; None: all), so
    another team's name of a shared image is never shown."""
    return queryset.prefetch_related(Prefetch("tags", queryset=readable_tags(repositories)))


def display_name(image: Image) -> str:
    """How ``docker ps`` names an image (a tag, else its ID), from tags prefetched by
    ``with_tags`` (``image_display_name`` asks the database for each image)."""
    tags = sorted(
        image.tags.all(), key=lambda t: (t.repository.registry, t.repository.name, t.name)
    )
    if not tags:
        return image.image_id
    tag = tags[0]
    return (
        f"{Reference(tag.repository.registry, tag.repository.name, None, None).familiar}:{tag.name}"
    )


def clean_path(raw: str | None) -> str:
    """The absolute image path asked for (``/`` by default), normalised; InvalidPath (a 400
    page) for ``..``, a NUL byte or a relative path."""
    path = (raw or "/").strip() or "/"
    return join_path(split_path(path))


def parent_path(path: str) -> str | None:
    """The directory holding ``path`` (None for ``/``)."""
    parts = split_path(path)
    return join_path(parts[:-1]) if parts else None


def breadcrumbs(path: str) -> list[tuple[str, str]]:
    """(name, path) from the root down to ``path``, for a trail of links."""
    parts = split_path(path)
    return [("/", "/")] + [(name, join_path(parts[: i + 1])) for i, name in enumerate(parts)]


def download_url(page: str, path: str) -> str:
    """The URL that streams ``path`` from a file-browser ``page``."""
    return f"{page}?{urlencode({'path': path, 'download': '1'})}"


@dataclass(frozen=True)
class FileContent:
    """What the page shows of a regular file: its text (up to the cap) or that it is binary."""

    size: int
    text: str | None  # None: binary
    truncated: bool


def read_file_content(view: FileView, path: str) -> FileContent:
    """The first TEXT_CAP bytes of a regular file, decoded if they are UTF-8 text."""
    entry = view.lstat(path)
    with view.open(path) as f:
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


def download_response(view: FileView, path: str) -> FileResponse:
    """A regular file of the view, streamed as an attachment."""
    entry = view.lstat(path)
    if not stat.S_ISREG(entry.st.st_mode):
        raise InvalidPath(f"{path}: not a regular file, nothing to download")
    name = split_path(path)[-1]
    return FileResponse(view.open(path), as_attachment=True, filename=name)


@dataclass(frozen=True)
class Row:
    """One line of a directory listing."""

    name: str
    path: str
    kind: str  # file, dir, symlink, char, block, fifo, socket, or "" for a deleted path
    size: int | None
    mode: str
    target: str  # a symlink's target, as stored
    mark: str  # A, C, D, or "" (unchanged, in a merged view)


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


def browse_context(view: FileView, path: str, *, own_layer: int | None = None) -> dict[str, Any]:
    """What a file-browser template needs for ``path`` in ``view``: a directory's rows (capped)
    or a file's content, a symlink's target, or another kind's description. Entries that come
    from layer ``own_layer`` (a container's writable layer) are marked ``W``."""
    entry = view.lstat(path)
    context: dict[str, Any] = {
        "path": path,
        "entry": entry_row(entry) if path != "/" else None,
        "crumbs": breadcrumbs(path),
        "parent": parent_path(path),
        "is_dir": entry.is_dir,
    }
    if entry.is_dir:
        children = view.listdir(path)
        context["total"] = len(children)
        context["rows"] = [
            entry_row(child, "W" if child.layer == own_layer else "")
            for child in children[:LIST_CAP]
        ]
        context["capped"] = len(children) > LIST_CAP
    elif stat.S_ISREG(entry.st.st_mode):
        context["content"] = read_file_content(view, path)
    return context


# -- the layer page ----------------------------------------------------------------------------


def _layer_users() -> Subquery:
    return Subquery(
        ImageLayer.objects.filter(layer=OuterRef("pk"))
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )


def _lower_chain(layer: Layer) -> list[str] | None:
    """The ChainIDs under ``layer``, bottom first (one image holding it tells them, in one
    query rather than a walk up the parent links); None if no image holds it."""
    place = ImageLayer.objects.filter(layer=layer).order_by("pk").first()
    if place is None:
        return [] if layer.parent_id is None else None
    return list(
        ImageLayer.objects.filter(image_id=place.image_id, position__lt=place.position)
        .order_by("position")
        .values_list("layer__chain_id", flat=True)
    )


def _layer_listing(
    snapshot: UnionView, lower: UnionView | None, path: str
) -> tuple[list[Row], int, bool]:
    """The layer's own entries in directory ``path``: what it adds (A), what it replaces in a
    lower layer (C), and what it deletes (D: whiteouts, and the lower children an opaque
    directory hides). Reads this one directory of the snapshot and of the lower view."""
    store = get_store()
    fmt = store.whiteouts
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


def layer_detail(request: HttpRequest, chain_hex: str) -> HttpResponseBase:
    """A layer by ChainID: its digests and sizes, the images that use it, and its own changes
    one directory at a time (``?path=``), or one of its files (``?path=`` naming a file)."""
    if not _CHAIN_HEX.fullmatch(chain_hex):
        raise Http404("not a ChainID")
    layer = get_object_or_404(
        restrict(Layer.objects.annotate(users=_layer_users()), request.user),
        chain_id=f"sha256:{chain_hex}",
    )
    images_qs = (
        with_tags(restrict(Image.objects.all(), request.user), named_by(request.user))
        .filter(image_layers__layer=layer)
        .distinct()
        .order_by("-added_at", "-pk")
    )
    images_page = Paginator(images_qs, IMAGES_PER_PAGE).get_page(request.GET.get("page"))
    images = [(image, display_name(image)) for image in images_page]
    # every image using the layer is counted (the figure must be true); only those the
    # user sees are listed: "used by 5 images: 2 of yours and others"
    yours = images_page.paginator.count

    store = get_store()
    path = clean_path(request.GET.get("path"))
    context: dict[str, Any] = {
        "layer": layer,
        "chain_hex": chain_hex,
        "images": images,
        "images_page": images_page,
        "yours": yours,
        "others": (getattr(layer, "users", 0) or 0) > yours,
        "path": path,
        "crumbs": breadcrumbs(path),
        "parent": parent_path(path),
    }
    snapshot_dir = store.snapshots.path(layer.chain_id)
    if not snapshot_dir.is_dir():
        context["missing"] = True
        return render(request, "layers/detail.html", context)
    snapshot = UnionView([snapshot_dir], store.whiteouts)
    entry = snapshot.lstat(path)
    if request.GET.get("download"):
        return download_response(snapshot, path)
    if not entry.is_dir:
        context["file"] = entry_row(entry)
        context["download_url"] = download_url(reverse("layers:detail", args=[chain_hex]), path)
        if stat.S_ISREG(entry.st.st_mode):
            context["content"] = read_file_content(snapshot, path)
        return render(request, "layers/detail.html", context)
    chain = _lower_chain(layer)
    lower_dirs = [store.snapshots.path(c) for c in chain] if chain is not None else None
    lower: UnionView | None = None
    if lower_dirs and all(p.is_dir() for p in lower_dirs):
        lower = UnionView(lower_dirs, store.whiteouts)
    elif lower_dirs or chain is None:
        # without the layers below, a changed path cannot be told from an added one
        context["lower_unknown"] = True
    rows, total, opaque = _layer_listing(snapshot, lower, path)
    context.update(rows=rows, total=total, capped=total > len(rows), opaque=opaque)
    return render(request, "layers/detail.html", context)


# -- an image's files --------------------------------------------------------------------------


def image_files(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The merged tree of an image (``?path=``): a directory's entries, a text file's contents
    (capped), a symlink's target; ``?download=1`` streams a regular file."""
    image = get_object_or_404(
        with_tags(restrict(Image.objects.all(), request.user), named_by(request.user)), pk=pk
    )
    path = clean_path(request.GET.get("path"))
    view = UnionView(image_lowers(image, build=False), get_store().whiteouts)
    if request.GET.get("download"):
        return download_response(view, path)
    context = browse_context(view, path)
    context.update(
        image=image,
        image_name=display_name(image),
        download_url=download_url(reverse("layers:image_files", args=[image.pk]), path),
    )
    return render(request, "layers/image_files.html", context)
