"""An image's wasted space (the panel its page loads) and its file tree from the file index,
one directory level per request, with wasted and duplicated files marked."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from layerhub.core.permissions import named_by, restrict
from layerhub.images.browse import clean_path
from layerhub.images.models import Image
from layerhub.images.views import wants_fragment
from layerhub.images.views_layers import breadcrumbs, display_name, with_tags
from layerhub.images.wasted import image_tree_page, image_wasted


def _visible_image(request: HttpRequest, pk: int) -> Image:
    image: Image = get_object_or_404(
        with_tags(restrict(Image.objects.all(), request.user), named_by(request.user)), pk=pk
    )
    return image


@require_safe
def image_wasted_section(request: HttpRequest, pk: int) -> HttpResponse:
    """The image page's "Wasted space" and "Duplicate bytes" panel."""
    image = _visible_image(request, pk)
    wasted = image_wasted(image)
    return render(
        request,
        "images/htmx/wasted.html",
        {"image": image, "wasted": wasted, "top": wasted.top() if wasted.ready else []},
    )


def _page_number(raw: str | None) -> int:
    try:
        return max(1, int(raw or 1))
    except ValueError:
        return 1


@require_safe
def image_file_tree(request: HttpRequest, pk: int) -> HttpResponse:
    """The image's files as its layers stack them (``?path=``, ``?page=``): each entry's type,
    mode, owner, size and providing layer, its superseded copies (wasted) and whether its
    content is stored by another snapshot too (duplicated). An htmx request gets the listing
    only."""
    image = _visible_image(request, pk)
    path = clean_path(request.GET.get("path"))
    wasted = image_wasted(image, duplicates=False)
    context = {
        "image": image,
        "image_name": display_name(image),
        "wasted": wasted,
        "path": path,
        "crumbs": breadcrumbs(path),
    }
    if wasted.ready:
        context["tree"] = image_tree_page(wasted, path, page=_page_number(request.GET.get("page")))
    template = "images/htmx/tree.html" if wants_fragment(request) else "images/tree.html"
    return render(request, template, context)
