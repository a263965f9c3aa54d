"""Which contents of an image are stored twice: the one place pages ask "which sha256s of these
layers does another snapshot hold too" (the file tree's "duplicated" mark and the image page's
duplicate-bytes figure read it; the store-wide dedup report builds on it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Count, QuerySet

from layerhub.engine.file_index import CONTENT_KINDS

from .models import FileEntry


def duplicated_contents() -> QuerySet[Any, Any]:
    """The one definition of a duplicate, for every page and report: the contents (sha256)
    of regular files, empty ones left out (there is nothing to share in them), that more
    than one snapshot holds. Rows of ``{"sha256", "snapshots"}``."""
    return (
        FileEntry.objects.filter(kind__in=CONTENT_KINDS, size__gt=0)
        .values("sha256")
        .annotate(snapshots=Count("layer", distinct=True))
        .filter(snapshots__gt=1)
    )


def shared_contents(
    layer_ids: Iterable[int], *, among: Iterable[bytes] | None = None
) -> set[bytes]:
    """The sha256s (32 raw bytes) of the files in ``layer_ids`` whose content is duplicated
    (``duplicated_contents``: another image's layer, or another layer of the same image, holds
    it too). ``among``: only these sha256s are asked about (a page of the file tree asks about
    the files it shows)."""
    ids = list(layer_ids)
    if not ids:
        return set()
    files = FileEntry.objects.filter(layer_id__in=ids, kind__in=CONTENT_KINDS, size__gt=0)
    if among is not None:
        wanted = list(set(among))
        if not wanted:
            return set()
        files = files.filter(sha256__in=wanted)
    held = duplicated_contents().filter(sha256__in=files.values("sha256"))
    return {bytes(sha) for sha in held.values_list("sha256", flat=True) if sha is not None}
