"""The search page: which images you see contain a file (a path, a prefix, a glob or a content
sha256) or a package (by name and version); one page, a tab for each."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from layerhub.engine.digest import short_id
from layerhub.images.file_search import (
    SEARCH_LIMIT,
    InvalidFileQuery,
    file_query,
    file_search,
)
from layerhub.images.views_packages import package_search_page

FILES_PER_PAGE = 100
TYPES = {
    "f": "file",
    "d": "directory",
    "l": "symlink",
    "h": "hardlink",
    "c": "char device",
    "b": "block device",
    "p": "fifo",
}


def search_page(request: HttpRequest) -> HttpResponse:
    """Files (``?q=*/libssl.so.3`` or ``?by=sha256&q=<hex>``) or, with ``?mode=packages``,
    packages (the packages tab)."""
    if request.GET.get("mode") == "packages":
        return package_search_page(request)
    params = request.GET
    form = {"q": params.get("q", ""), "by": params.get("by", "path")}
    if form["by"] not in ("path", "sha256"):
        form["by"] = "path"
    error = ""
    rows: list[dict[str, object]] = []
    truncated = False
    total = 0
    searched = bool(form["q"].strip()) or "q" in params
    page = None
    if searched:
        try:
            if form["by"] == "sha256":
                query = file_query(sha256=form["q"])
            else:
                query = file_query(pattern=form["q"])
            result = file_search(user=request.user, query=query)
        except InvalidFileQuery as exc:
            error = str(exc)
        else:
            truncated = result.truncated
            total = len(result.matches)
            page = Paginator(result.matches, FILES_PER_PAGE).get_page(params.get("page"))
            for m in page.object_list:
                names = result.names.get(m.image_id, [])
                rows.append(
                    {
                        "match": m,
                        "image_name": names[0] if names else "",
                        "other_names": names[1:],
                        "type": TYPES.get(m.kind, m.kind),
                        "mode": f"{m.mode:04o}",
                        "layer": short_id(result.layer_digests.get(m.layer_id, "")),
                        "chain_hex": result.layer_chains.get(m.layer_id, "").removeprefix(
                            "sha256:"
                        ),
                    }
                )
    query_string = params.copy()
    query_string.pop("page", None)
    return render(
        request,
        "images/search.html",
        {
            "mode": "files",
            "form": form,
            "rows": rows,
            "searched": searched,
            "error": error,
            "total": total,
            "truncated": truncated,
            "limit": SEARCH_LIMIT,
            "page": page,
            "query_string": query_string.urlencode(),
        },
    )
