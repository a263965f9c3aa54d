"""``system/df`` and the catalog's search."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.db.models import F
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import LayerhubAPIView
from layerhub.api.filters import search_condition
from layerhub.api.pagination import Pagination, paginated
from layerhub.api.selectors import images_totals
from layerhub.api.serializers.common import PAGE_PARAMETERS, page_of
from layerhub.api.serializers.images import ImageSerializer
from layerhub.api.serializers.system import DfSerializer
from layerhub.api.views.images import with_visible_names
from layerhub.core.permissions import VIEW, is_staff, restrict
from layerhub.images.models import Image
from layerhub.images.sizes import images_with_sizes, store_totals


def _store(user: Any) -> dict[str, Any] | None:
    """The store-wide totals, for staff alone (they tell about every team's images)."""
    if not is_staff(user):
        return None
    totals = store_totals()
    return {
        **asdict(totals),
        "physical_bytes": totals.physical_bytes,
        "savings_bytes": totals.savings_bytes,
        "savings_percent": round(totals.savings_percent, 2),
    }


class DfView(LayerhubAPIView):
    """``docker system df -v``: the images you see, their logical total and how much of it
    is shared; each image's SIZE, SHARED SIZE and UNIQUE SIZE, a page at a time. Staff also
    get the store's physical total and what sharing saves."""

    @extend_schema(tags=["system"], parameters=PAGE_PARAMETERS, responses=DfSerializer)
    def get(self, request: Request) -> Response:
        images = restrict(Image.objects.all(), request.user, VIEW)
        totals = images_totals(images)
        listed = with_visible_names(images_with_sizes(images), request.user).order_by(
            F("unique_size").desc(), "-pk"
        )
        paginator = Pagination()
        page = paginator.paginate_queryset(listed, request, view=self)
        results = ImageSerializer(page, many=True, context={"request": request}).data
        return Response(
            {
                "totals": asdict(totals),
                "store": _store(request.user),
                "count": paginator.count,
                "next": paginator.get_next_link(),
                "previous": paginator.get_previous_link(),
                "results": results,
            }
        )


class SearchView(LayerhubAPIView):
    """Search the catalog you see: references, labels (keys and values), and image IDs,
    manifest digests and layer digests by their start."""

    @extend_schema(
        tags=["system"],
        parameters=[
            OpenApiParameter("q", str, required=True, description="what to look for"),
            *PAGE_PARAMETERS,
        ],
        responses=page_of(ImageSerializer, "SearchPage"),
    )
    def get(self, request: Request) -> Response:
        text = request.query_params.get("q", "").strip()
        if not text:
            raise ValidationError({"q": "give something to search for"})
        if len(text) > 512:
            raise ValidationError({"q": "at most 512 characters"})
        images = restrict(Image.objects.all(), request.user, VIEW).filter(
            search_condition(text, request.user)
        )
        listed = with_visible_names(images_with_sizes(images), request.user).order_by(
            "-added_at", "-pk"
        )
        return paginated(request, self, listed, ImageSerializer)
