"""Searching files in images: ``/api/v1/files/?pattern=*/libssl.so.3`` (a path, a prefix ending in
``/``, or a glob) or ``?sha256=<hex>`` finds them in the final view of each image the user
sees, with the layer providing each, the newest images first."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet
from layerhub.api.pagination import paginated
from layerhub.api.serializers.common import PAGE_PARAMETERS
from layerhub.api.serializers.file_search import FileMatchSerializer
from layerhub.images.file_search import (
    SEARCH_LIMIT,
    FileSearchResult,
    file_query,
    file_search,
)
from layerhub.images.models import FileEntry

SEARCH_PARAMETERS = [
    OpenApiParameter(
        "pattern",
        str,
        description="a path (/etc/os-release), a prefix (/usr/lib/) or a glob (*/libssl.so.3, "
        "usr/lib/*/libcrypto*; without '/': a name anywhere)",
    ),
    OpenApiParameter("sha256", str, description="a content hash, with or without 'sha256:'"),
]
TYPES = {
    "f": "file",
    "d": "directory",
    "l": "symlink",
    "h": "hardlink",
    "c": "char",
    "b": "block",
    "p": "fifo",
}
# set on the answer when the search found more than SEARCH_LIMIT rows
TRUNCATED_HEADER = "X-Search-Truncated"


def result_rows(result: FileSearchResult) -> list[dict[str, Any]]:
    """The rows of a search, as FileMatchSerializer reads them."""
    return [
        {
            "image": m.image_id,
            "image_names": result.names.get(m.image_id, []),
            "path": m.path,
            "type": TYPES.get(m.kind, m.kind),
            "mode": f"{m.mode:04o}",
            "uid": m.uid,
            "gid": m.gid,
            "size": m.size,
            "sha256": m.sha256,
            "link": m.link,
            "layer": result.layer_digests.get(m.layer_id, ""),
            "layer_position": m.layer_position,
        }
        for m in result.matches
    ]


@extend_schema(tags=["files"])
class FileViewSet(RestrictedViewSet[FileEntry]):
    """Files in the images you see."""

    queryset = FileEntry.objects.none()
    serializer_class = FileMatchSerializer

    def get_queryset(self) -> QuerySet[FileEntry]:
        # rows are computed from the layers' indexes, for the images restrict() lets through
        return FileEntry.objects.none()

    @extend_schema(
        summary="Which images contain a path, a prefix, a glob or a content sha256",
        description=f"Each image's final view (what a later layer deletes is not in it), the "
        f"newest images first; at most {SEARCH_LIMIT} rows (the header {TRUNCATED_HEADER}: "
        "true says there were more).",
        parameters=[*SEARCH_PARAMETERS, *PAGE_PARAMETERS],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        params = request.query_params
        query = file_query(pattern=params.get("pattern"), sha256=params.get("sha256"))
        result = file_search(user=request.user, query=query)
        answer = paginated(request, self, result_rows(result), FileMatchSerializer)
        if result.truncated:
            answer[TRUNCATED_HEADER] = "true"
        return answer
