"""Listing a path of an image, a layer or a container, the way the file browsers do (the
same engine views: nothing outside a tree is ever opened, symlinks are never followed)."""

from __future__ import annotations

import stat
from typing import Any

from rest_framework.request import Request

from layerhub.engine.union import FileView
from layerhub.images.views_layers import LIST_CAP, Row, clean_path, entry_row


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


def path_listing(
    view: FileView,
    path: str,
    *,
    own_layer: int | None = None,
    rows: list[Row] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """``path`` in ``view``: the entry, and a directory's entries (at most LIST_CAP; ``rows``
    and ``total`` when the caller listed them itself, as a layer's own changes are). Entries
    from layer ``own_layer`` (a container's writable layer) are marked ``W``."""
    entry = view.lstat(path)
    row = entry_row(entry)
    body: dict[str, Any] = {
        "path": path,
        "kind": row.kind,
        "size": row.size,
        "mode": row.mode,
        "target": row.target,
        "entries": None,
        "total": 0,
        "capped": False,
    }
    if stat.S_ISDIR(entry.st.st_mode):
        if rows is None:
            children = view.listdir(path)
            total = len(children)
            rows = [
                entry_row(child, "W" if child.layer == own_layer else "")
                for child in children[:LIST_CAP]
            ]
        count = total if total is not None else len(rows)
        body.update(entries=[_row(r) for r in rows], total=count, capped=count > len(rows))
    return body
