"""Every list is paged: ``?limit=`` (at most MAX_LIMIT) and ``?offset=``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Pagination(LimitOffsetPagination):
    """Limit and offset with a maximum page size: ``{"count", "next", "previous",
    "results"}``."""

    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT


def paginated(
    request: Request,
    view: APIView,
    items: Any,
    serializer_class: Callable[..., BaseSerializer[Any]] | None = None,
    context: dict[str, Any] | None = None,
) -> Response:
    """A page of ``items`` (a queryset, or a list an action computed), through
    ``serializer_class`` if given (``items`` are JSON-ready otherwise)."""
    paginator = Pagination()
    page: list[Any] = paginator.paginate_queryset(items, request, view=view) or []
    if serializer_class is None:
        return paginator.get_paginated_response(page)
    context = context if context is not None else {"request": request}
    return paginator.get_paginated_response(serializer_class(page, many=True, context=context).data)
