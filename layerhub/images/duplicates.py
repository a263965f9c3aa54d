"""Which contents of an image are stored twice: the one place pages ask "which sha256s of these
layers does another snapshot hold too" (the file tree's "duplicated" mark and the image page's
duplicate-bytes figure read it; the store-wide dedup report builds on it)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count

from layerhub.engine.file_index import CONTENT_KINDS

from .models import FileEntry


def shared_contents(
    layer_ids: Iterable[int], *, among: Iterable[bytes] | None = None
) -> set[bytes]:
    """The sha256s (32 raw bytes) of regular files in ``layer_ids`` whose content more than
    one snapshot holds (another image's layer, or another layer of the same image). Empty
    files are left out: there is nothing to share in them. ``among``: only these sha256s are
    asked about (a page of the file tree asks about the files it shows)."""
    ids = list(layer_ids)
    if not ids:
        return set()
    files = FileEntry.objects.filter(layer_id__in=ids, kind__in=CONTENT_KINDS, size__gt=0)
    if among is not None:
        wanted = list(set(among))
        if not wanted:
            return set()
        files = files.filter(sha256__in=wanted)
    mine = files.values("sha256")
    held = (
        FileEntry.objects.filter(sha256__in=mine, kind__in=CONTENT_KINDS)
        .values("sha256")
        .annotate(snapshots=Count("layer", distinct=True))
        .filter(snapshots__gt=1)
        .values_list("sha256", flat=True)
    )
    return {bytes(sha) for sha in held if sha is not None}
