"""Repositories and tags: list them, tag an image, move a tag, delete a tag."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet
from layerhub.api.filters import RepositoryFilter, TagFilter
from layerhub.api.serializers.catalog import (
    RepositorySerializer,
    TagCreateSerializer,
    TagMoveSerializer,
    TagSerializer,
)
from layerhub.core.permissions import CHANGE, DELETE
from layerhub.images.models import Repository, Tag
from layerhub.images.services import tag_add, tag_remove


@extend_schema(tags=["repositories"])
class RepositoryViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, RestrictedViewSet[Repository]
):
    """The catalog's repositories: the user's teams', and those marked public."""

    queryset = Repository.objects.select_related("team").order_by("registry", "name", "team")
    serializer_class = RepositorySerializer
    filterset_class = RepositoryFilter
    lookup_value_regex = "[0-9]{1,18}"

    def get_queryset(self) -> QuerySet[Repository]:
        return super().get_queryset().annotate(tag_count=Count("tags"))


@extend_schema(tags=["repositories"])
class TagViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    RestrictedViewSet[Tag],
):
    """Tags: names in repositories, each pointing at one image."""

    queryset = Tag.objects.select_related("repository", "repository__team").order_by(
        "repository__registry", "repository__name", "name", "pk"
    )
    serializer_class = TagSerializer
    filterset_class = TagFilter
    lookup_value_regex = "[0-9]{1,18}"
    permission_actions = {"destroy": DELETE, "update": CHANGE, "partial_update": CHANGE}
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    @extend_schema(
        summary="docker tag: name an image in a team's repository",
        request=TagCreateSerializer,
        responses={201: TagSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = TagCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        tag = tag_add(
            image=data["image"], reference=data["reference"], team=data["team"], user=request.user
        )
        body = TagSerializer(tag, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Move the tag to another image", request=TagMoveSerializer)
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        tag = self.get_object()
        form = TagMoveSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        moved = tag_add(
            image=form.validated_data["image"],
            reference=f"{tag.repository}:{tag.name}",
            team=tag.repository.team,
            user=request.user,
        )
        return Response(TagSerializer(moved, context=self.get_serializer_context()).data)

    @extend_schema(summary="Move the tag to another image", request=TagMoveSerializer)
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return self.update(request, *args, **kwargs)

    @extend_schema(summary="Remove the tag")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        tag = self.get_object()
        tag_remove(tag=tag, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
