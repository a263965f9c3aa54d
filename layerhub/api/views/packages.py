"""Installed packages: ``/api/v1/packages/?name=openssl&op=<&version=3.0.15`` finds them in the
images the user sees, compared in each ecosystem's own version order; ``?image=ID`` lists one
image's packages."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet
from layerhub.api.pagination import paginated
from layerhub.api.serializers.common import PAGE_PARAMETERS
from layerhub.api.serializers.packages import PackageSerializer
from layerhub.core.permissions import VIEW, restrict
from layerhub.images.models import Image, Package
from layerhub.images.package_search import InvalidPackageQuery, package_query, package_search

SEARCH_PARAMETERS = [
    OpenApiParameter("name", str, description="a package name (Python names as PEP 503 folds)"),
    OpenApiParameter("ecosystem", str, enum=Package.Ecosystem.values),
    OpenApiParameter("op", str, enum=["<", "<=", "=", ">=", ">"], description="with version"),
    OpenApiParameter("version", str, description="compared in the ecosystem's own order"),
    OpenApiParameter("image", int, description="only this image's packages"),
]


@extend_schema(tags=["packages"])
class PackageViewSet(mixins.RetrieveModelMixin, RestrictedViewSet[Package]):
    """Packages installed in the images you see."""

    queryset = Package.objects.all()
    serializer_class = PackageSerializer

    def get_queryset(self) -> QuerySet[Package]:
        # a package is seen through its image: restrict() decides on images
        visible = restrict(Image.objects.all(), self.request.user, VIEW)
        return Package.objects.filter(image__in=visible.values("pk")).order_by(
            "image_id", "ecosystem", "name_key", "id"
        )

    @extend_schema(
        summary="Search packages by name and version, or list an image's",
        parameters=[*SEARCH_PARAMETERS, *PAGE_PARAMETERS],
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        params = request.query_params
        image = params.get("image")
        rows: Any = self.get_queryset()
        if image is not None:
            if not image.isdigit():
                raise InvalidPackageQuery("image must be an image's number (its id)")
            rows = rows.filter(image_id=int(image))
        if params.get("name") or params.get("op") or params.get("version"):
            query = package_query(
                name=params.get("name"),
                ecosystem=params.get("ecosystem"),
                op=params.get("op"),
                version=params.get("version"),
            )
            found = package_search(user=request.user, query=query)
            rows = [p for p in found if image is None or p.image_id == int(image)]
        elif params.get("ecosystem"):
            if params["ecosystem"] not in Package.Ecosystem.values:
                raise InvalidPackageQuery(f"unknown ecosystem {params['ecosystem']!r}")
            rows = rows.filter(ecosystem=params["ecosystem"])
        return paginated(request, self, rows, PackageSerializer)
