"""The layer page (one layer's own changes, A/C/D, a directory at a time) and an image's
merged files, browsable. What they show is read on a host that holds the snapshots
(``layerhub.images.snapshot_files``) and rendered here. Every path comes from the query
string and is hostile: it is only ever looked up through the engine's union view, which
refuses ``..`` and never follows a symlink, so nothing outside a layer's tree is opened."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, BinaryIO

from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.http import FileResponse, Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import urlencode

from layerhub.core.middleware import user_error_status
from layerhub.core.permissions import named_by, restrict
from layerhub.engine.errors import InvalidPath, SnapshotNotFound
from layerhub.engine.reference import Reference
from layerhub.engine.union import FileView, join_path, split_path
from layerhub.hosts.routing import HostUnavailable
from layerhub.images.browse import Browse, Row, clean_path, entry_row, tree_browse
from layerhub.images.listing import readable_tags
from layerhub.images.models import Image, ImageLayer, Layer, Repository
from layerhub.images.snapshot_files import (
    SnapshotFiles,
    image_snapshot_files,
    layer_snapshot_files,
)

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


def file_download(row: Row, open_file: Callable[[], BinaryIO]) -> FileResponse:
    """The regular file ``row`` (``open_file`` opens it) streamed as an attachment."""
    if row.kind != "file":
        raise InvalidPath(f"{row.path}: not a regular file, nothing to download")
    response = FileResponse(open_file(), as_attachment=True, filename=row.name)
    if row.size is not None and not response.has_header("Content-Length"):
        response["Content-Length"] = str(row.size)  # a file read from another host
    return response


def download_response(view: FileView, path: str) -> FileResponse:
    """A regular file of the view, streamed as an attachment."""
    return file_download(entry_row(view.lstat(path)), lambda: view.open(path))


def page_context(browse: Browse) -> dict[str, Any]:
    """What a file-browser template needs from ``browse``: the entry, a directory's rows
    (capped) or a file's content, and the trail of links to it."""
    return {
        "path": browse.path,
        "entry": browse.entry if browse.path != "/" else None,
        "crumbs": breadcrumbs(browse.path),
        "parent": parent_path(browse.path),
        "is_dir": browse.is_dir,
        "rows": browse.rows or [],
        "total": browse.total,
        "capped": browse.capped,
        "content": browse.content,
        "opaque": browse.opaque,
        "lower_unknown": browse.lower_unknown,
    }


def browse_context(view: FileView, path: str, *, own_layer: int | None = None) -> dict[str, Any]:
    """``page_context`` of ``path`` in ``view``. Entries that come from layer ``own_layer``
    (a container's writable layer) are marked ``W``."""
    return page_context(tree_browse(view, path, own_layer=own_layer))


def _browse_or_download(
    request: HttpRequest, files: SnapshotFiles, path: str
) -> Browse | FileResponse:
    """``path`` of ``files`` as the page shows it, or (``?download=1``) the file streamed."""
    download = bool(request.GET.get("download"))
    browse = files.browse(path, content=not download)
    if download:
        return file_download(browse.entry, lambda: files.open(path, browse.entry.size or 0))
    return browse


# -- the layer page ----------------------------------------------------------------------------


def _layer_users() -> Subquery:
    return Subquery(
        ImageLayer.objects.filter(layer=OuterRef("pk"))
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )


def _layer_context(request: HttpRequest, layer: Layer, chain_hex: str) -> dict[str, Any]:
    """The layer's facts and the images that use it (those the user sees, one page)."""
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
    return {
        "layer": layer,
        "chain_hex": chain_hex,
        "images": images,
        "images_page": images_page,
        "yours": yours,
        "others": (getattr(layer, "users", 0) or 0) > yours,
    }


def layer_detail(request: HttpRequest, chain_hex: str) -> HttpResponseBase:
    """A layer by ChainID: its digests and sizes, the images that use it, and its own changes
    one directory at a time (``?path=``), or one of its files (``?path=`` naming a file),
    read on a host that holds its snapshot (``layer_snapshot_files``)."""
    if not _CHAIN_HEX.fullmatch(chain_hex):
        raise Http404("not a ChainID")
    layer = get_object_or_404(
        restrict(Layer.objects.annotate(users=_layer_users()), request.user),
        chain_id=f"sha256:{chain_hex}",
    )
    context = _layer_context(request, layer, chain_hex)
    path = clean_path(request.GET.get("path"))
    context.update(path=path, crumbs=breadcrumbs(path), parent=parent_path(path))
    try:
        browse = _browse_or_download(request, layer_snapshot_files(layer), path)
    except (SnapshotNotFound, HostUnavailable) as exc:
        # the page still shows the layer's facts; its changes are what cannot be read now
        context["missing"] = str(exc)
        status = user_error_status(exc) if isinstance(exc, HostUnavailable) else 200
        return render(request, "layers/detail.html", context, status=status)
    if isinstance(browse, FileResponse):
        return browse
    context.update(page_context(browse))
    if not browse.is_dir:
        context["file"] = browse.entry
        context["download_url"] = download_url(reverse("layers:detail", args=[chain_hex]), path)
    return render(request, "layers/detail.html", context)


# -- an image's files --------------------------------------------------------------------------


def image_files(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The merged tree of an image (``?path=``): a directory's entries, a text file's contents
    (capped), a symlink's target; ``?download=1`` streams a regular file. Read on a host that
    holds the image's layers (``image_snapshot_files``)."""
    image = get_object_or_404(
        with_tags(restrict(Image.objects.all(), request.user), named_by(request.user)), pk=pk
    )
    path = clean_path(request.GET.get("path"))
    context: dict[str, Any] = {
        "image": image,
        "image_name": display_name(image),
        "download_url": download_url(reverse("layers:image_files", args=[image.pk]), path),
    }
    try:
        browse = _browse_or_download(request, image_snapshot_files(image), path)
    except (SnapshotNotFound, HostUnavailable) as exc:
        context.update(problem=str(exc), path=path, crumbs=breadcrumbs(path))
        return render(request, "layers/image_files.html", context, status=user_error_status(exc))
    if isinstance(browse, FileResponse):
        return browse
    context.update(page_context(browse))
    return render(request, "layers/image_files.html", context)
