"""Layers by ChainID: the layer, the images that use it (those the user sees, and whether
others do), and its own changes (A/C/D), a directory at a time. A layer opens only when an
image the user sees uses it."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet
from layerhub.api.pagination import paginated
from layerhub.api.selectors import layer_sharing
from layerhub.api.serializers.common import PAGE_PARAMETERS, page_of
from layerhub.api.serializers.containers import PathSerializer
from layerhub.api.serializers.images import ImageSerializer, LayerSerializer
from layerhub.api.views.files import asked_path, listing_body
from layerhub.api.views.images import PATH_PARAMETER, with_visible_names
from layerhub.core.permissions import VIEW, restrict
from layerhub.images.models import Image, Layer
from layerhub.images.sizes import images_with_sizes
from layerhub.images.snapshot_files import layer_snapshot_files


@extend_schema(tags=["layers"])
class LayerViewSet(mixins.RetrieveModelMixin, RestrictedViewSet[Layer]):
    """A layer in its place in a stack, by ChainID (``sha256:`` optional in the address)."""

    queryset = Layer.objects.select_related("parent")
    serializer_class = LayerSerializer
    lookup_field = "chain_id"
    lookup_value_regex = "(?:sha256:)?[a-f0-9]{64}"

    def get_object(self) -> Layer:
        value = str(self.kwargs["chain_id"])
        chain_id = value if value.startswith("sha256:") else f"sha256:{value}"
        layer: Layer = get_object_or_404(self.get_queryset(), chain_id=chain_id)
        self.check_object_permissions(self.request, layer)
        return layer

    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        layer = self.get_object()
        context = {
            **self.get_serializer_context(),
            "sharing": layer_sharing([layer.pk], request.user),
        }
        return Response(LayerSerializer(layer, context=context).data)

    @extend_schema(
        summary="The images you see that use the layer",
        parameters=PAGE_PARAMETERS,
        responses=page_of(ImageSerializer, "ImagePage"),
    )
    @action(detail=True, methods=["get"])
    def images(self, request: Request, chain_id: str) -> Response:
        layer = self.get_object()
        visible = restrict(Image.objects.all(), request.user, VIEW).filter(
            image_layers__layer=layer
        )
        images = with_visible_names(images_with_sizes(visible), request.user).order_by(
            "-added_at", "-pk"
        )
        return paginated(request, self, images, ImageSerializer)

    @extend_schema(
        summary="The layer's own changes in a directory (A added, C changed, D deleted)",
        parameters=[PATH_PARAMETER],
        responses=PathSerializer,
    )
    @action(detail=True, methods=["get"])
    def files(self, request: Request, chain_id: str) -> Response:
        layer = self.get_object()
        path = asked_path(request)
        # read on a host that holds the snapshot: 404 when none does, 503 when none is up
        browse = layer_snapshot_files(layer).browse(path, content=False)
        return Response(listing_body(browse))
