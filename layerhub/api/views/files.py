"""Listing a path of an image, a layer or a container, the way the file browsers do (the
same engine views: nothing outside a tree is ever opened, symlinks are never followed)."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request

from layerhub.engine.union import FileView
from layerhub.images.browse import Browse, Row, clean_path, tree_browse


def asked_path(request: Request) -> str:
    """The ``?path=`` asked for, normalised (InvalidPath, a 400, for ``..``, NUL, relative)."""
    return clean_path(request.query_params.get("path"))


def _row(row: Row) -> dict[str, Any]:
    return {
        "name": row.name,
        "path": row.path,
        "kind": row.kind,
        "size": row.size,
        "mode": row.mode,
        "target": row.target,
        "change": row.mark,
    }


def listing_body(browse: Browse) -> dict[str, Any]:
    """The answer for one path: the entry, and a directory's entries (at most LIST_CAP of
    ``total``)."""
    entry = browse.entry
    return {
        "path": browse.path,
        "kind": entry.kind,
        "size": entry.size,
        "mode": entry.mode,
        "target": entry.target,
        "entries": None if browse.rows is None else [_row(r) for r in browse.rows],
        "total": browse.total,
        "capped": browse.capped,
    }


def path_listing(view: FileView, path: str, *, own_layer: int | None = None) -> dict[str, Any]:
    """``path`` in ``view`` (``listing_body``). Entries from layer ``own_layer`` (a
    container's writable layer) are marked ``W``."""
    return listing_body(tree_browse(view, path, own_layer=own_layer, content=False))
