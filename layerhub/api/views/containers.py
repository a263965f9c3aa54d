"""Containers: create, list, remove; their files (list, read, write, upload, delete); run a
command; ``docker diff``; commit (202 with the job)."""

from __future__ import annotations

from typing import Any, BinaryIO, cast

from django.db.models import Prefetch, QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet, job_accepted
from layerhub.api.errors import PayloadTooLarge
from layerhub.api.filters import ContainerFilter
from layerhub.api.pagination import paginated
from layerhub.api.serializers.common import PAGE_PARAMETERS, page_of
from layerhub.api.serializers.containers import (
    OUTPUT_CAP,
    ChangeSerializer,
    CommitSerializer,
    ContainerCreateSerializer,
    ContainerSerializer,
    ExecResultSerializer,
    ExecSerializer,
    FileWriteSerializer,
    PathSerializer,
    UploadSerializer,
)
from layerhub.api.serializers.jobs import JobSerializer
from layerhub.api.views.files import asked_path, path_listing
from layerhub.api.views.images import PATH_PARAMETER
from layerhub.containers.files import container_files
from layerhub.containers.forms import MAX_UPLOAD_BYTES
from layerhub.containers.models import Container
from layerhub.containers.services import (
    container_commit,
    container_create,
    container_diff,
    container_exec,
    container_remove_path,
    container_rm,
    container_write_file,
)
from layerhub.core.permissions import CHANGE, DELETE, VIEW, restrict
from layerhub.images.browse import clean_path
from layerhub.images.models import Tag
from layerhub.images.views_layers import download_response

UPLOAD_OVERHEAD = 64 * 1024  # the multipart framing and the form's other fields
RECURSIVE_PARAMETER = OpenApiParameter(
    "recursive", bool, description="delete a directory and what it holds", required=False
)


def _cut(data: bytes) -> tuple[str, bool]:
    return data[:OUTPUT_CAP].decode("utf-8", errors="replace"), len(data) > OUTPUT_CAP


@extend_schema(tags=["containers"])
class ContainerViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    RestrictedViewSet[Container],
):
    """Containers (a writable layer over an image), by name."""

    queryset = Container.objects.select_related("image", "team", "created_by")
    serializer_class = ContainerSerializer
    filterset_class = ContainerFilter
    lookup_field = "name"
    lookup_value_regex = "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}"
    permission_actions = {
        "destroy": DELETE,
        "files": VIEW,
        "content": VIEW,
        "diff": VIEW,
        "write_file": CHANGE,
        "delete_path": CHANGE,
        "upload": CHANGE,
        "exec": CHANGE,
        "commit": CHANGE,
    }

    def get_queryset(self) -> QuerySet[Container]:
        tags = restrict(Tag.objects.select_related("repository"), self.request.user, VIEW)
        visible = Prefetch("image__tags", queryset=tags.order_by("pk"), to_attr="visible_tags")
        return super().get_queryset().prefetch_related(visible)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if self.action == "upload":
            # before anything reads the body (the session's CSRF check would)
            try:
                announced = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                announced = 0
            if announced > MAX_UPLOAD_BYTES + UPLOAD_OVERHEAD:
                raise PayloadTooLarge(
                    f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
                )
        super().initial(request, *args, **kwargs)

    @extend_schema(
        summary="docker create: a container over an image",
        request=ContainerCreateSerializer,
        responses={201: ContainerSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        form = ContainerCreateSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        container = container_create(
            image=data["image"].manifest_digest,
            name=data.get("name") or None,
            user=request.user,
            team=data["team"],
            host=data.get("host") or None,
        )
        body = ContainerSerializer(container, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(summary="docker rm: the container and its writable layer go")
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        container_rm(container=self.get_object(), user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="A path of the container: a directory's entries (W: the container's own), "
        "or one entry",
        parameters=[PATH_PARAMETER],
        responses=PathSerializer,
    )
    @action(detail=True, methods=["get"])
    def files(self, request: Request, name: str) -> Response:
        fs = container_files(self.get_object())
        return Response(path_listing(fs.view, asked_path(request), own_layer=fs.own_layer))

    @extend_schema(
        summary="Create or replace a file",
        request=FileWriteSerializer,
        responses={201: PathSerializer},
    )
    @files.mapping.post
    def write_file(self, request: Request, name: str) -> Response:
        container = self.get_object()
        form = FileWriteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        container_write_file(
            container=container, path=data["path"], data=data["data"], mode=data["mode"]
        )
        return self._written(container, data["path"])

    @extend_schema(
        summary="Delete a path (a whiteout hides what the image has there)",
        parameters=[PATH_PARAMETER, RECURSIVE_PARAMETER],
        responses={204: None},
    )
    @files.mapping.delete
    def delete_path(self, request: Request, name: str) -> Response:
        container = self.get_object()
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true", "yes")
        path = asked_path(request)
        container_remove_path(container=container, path=path, recursive=recursive)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Read a regular file",
        parameters=[PATH_PARAMETER],
        responses={
            (200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY),
        },
    )
    @action(detail=True, methods=["get"], url_path="files/content")
    def content(self, request: Request, name: str) -> FileResponse:
        container = self.get_object()
        return download_response(container_files(container).view, asked_path(request))

    @extend_schema(
        summary="Upload a file (multipart/form-data)",
        request={"multipart/form-data": UploadSerializer},
        responses={201: PathSerializer},
    )
    @action(
        detail=True, methods=["post"], url_path="files/upload", parser_classes=[MultiPartParser]
    )
    def upload(self, request: Request, name: str) -> Response:
        container = self.get_object()
        form = UploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        path = form.validated_data["path"]
        with form.validated_data["file"].open("rb") as data:
            container_write_file(container=container, path=path, data=cast(BinaryIO, data))
        return self._written(container, path)

    def _written(self, container: Container, path: str) -> Response:
        body = path_listing(container_files(container).view, clean_path(path))
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="docker exec: run a command and wait for it",
        request=ExecSerializer,
        responses=ExecResultSerializer,
    )
    @action(detail=True, methods=["post"])
    def exec(self, request: Request, name: str) -> Response:
        container = self.get_object()
        form = ExecSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        done = container_exec(
            container=container,
            argv=data["argv"],
            timeout=float(data["timeout"]),
            network=data["network"],
        )
        stdout, stdout_cut = _cut(done.stdout)
        stderr, stderr_cut = _cut(done.stderr)
        return Response(
            {
                "exit_code": done.exit_code,
                "stdout": stdout,
                "stderr": stderr,
                "stdout_truncated": stdout_cut,
                "stderr_truncated": stderr_cut,
                "duration": round(done.duration, 3),
            }
        )

    @extend_schema(
        summary="docker diff: A added, C changed, D deleted",
        parameters=PAGE_PARAMETERS,
        responses=page_of(ChangeSerializer, "ChangePage"),
    )
    @action(detail=True, methods=["get"])
    def diff(self, request: Request, name: str) -> Response:
        changes = container_diff(container=self.get_object())
        rows = [{"kind": change.kind, "path": change.path} for change in changes]
        return paginated(request, self, rows)

    @extend_schema(
        summary="docker commit: queue a commit as a new image (202 with the job)",
        request=CommitSerializer,
        responses={202: JobSerializer},
    )
    @action(detail=True, methods=["post"])
    def commit(self, request: Request, name: str) -> Response:
        container = self.get_object()
        form = CommitSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        job = container_commit(
            container=container,
            repository=data.get("repository") or None,
            message=data.get("message", ""),
            author=data.get("author", ""),
            changes=data.get("changes", []),
            user=request.user,
        )
        return job_accepted(request, job)
