"""Images: the list with sizes, an image with its layers, history and what deleting it frees,
delete, and the pull, import, push and save jobs (202 with the job)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import mixins, serializers
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet, job_accepted
from layerhub.api.errors import PayloadTooLarge
from layerhub.api.filters import ImageFilter
from layerhub.api.selectors import layer_sharing
from layerhub.api.serializers.containers import PathSerializer
from layerhub.api.serializers.images import (
    DeletePlanSerializer,
    ImageDetailSerializer,
    ImageSerializer,
    ImportSerializer,
    PullSerializer,
    PushSerializer,
    SaveSerializer,
    image_references,
)
from layerhub.api.serializers.jobs import JobSerializer
from layerhub.api.serializers.wasted import (
    WASTED_LIMIT,
    WASTED_LIMIT_MAX,
    ImageTreeSerializer,
    ImageWastedSerializer,
    image_tree_body,
    image_wasted_body,
)
from layerhub.api.views.files import asked_path, listing_body
from layerhub.containers.models import Container
from layerhub.core.permissions import DELETE, VIEW, restrict
from layerhub.engine.errors import ArchiveError
from layerhub.images.models import Image, ImageLayer, Repository, Tag
from layerhub.images.selectors import image_history
from layerhub.images.services import image_import, image_pull
from layerhub.images.services.transfer import (
    image_push,
    image_remove,
    image_remove_plan,
    image_save,
)
from layerhub.images.sizes import image_delete_plan, images_with_sizes
from layerhub.images.snapshot_files import image_snapshot_files
from layerhub.images.wasted import image_tree_page, image_wasted
from layerhub.jobs.services import acting_user, export_path, job_discard_upload
from layerhub.jobs.uploads import ArchiveUploadHandler, StoredUpload

PATH_PARAMETER = OpenApiParameter(
    "path", str, description="an absolute path in the tree (default: /)", required=False
)
DELETED = inline_serializer(
    "ImageDeleted",
    {
        "untagged": serializers.ListField(child=serializers.CharField()),
        "deleted": serializers.ListField(child=serializers.CharField()),
        "freed_bytes": serializers.IntegerField(),
    },
)
# the multipart framing and the form's other fields, beyond the archive itself
UPLOAD_OVERHEAD = 64 * 1024


def with_visible_names(images: QuerySet[Image], user: Any) -> QuerySet[Image]:
    """``images`` with the tags and repositories naming them that ``user`` sees (two more
    queries for any number of images): nothing else names an image in an answer."""
    tags = restrict(Tag.objects.select_related("repository"), user, VIEW).order_by(
        "repository__registry", "repository__name", "name"
    )
    repositories = restrict(Repository.objects.all(), user, VIEW).order_by("registry", "name")
    return images.prefetch_related(
        Prefetch("tags", queryset=tags, to_attr="visible_tags"),
        Prefetch("repositories", queryset=repositories, to_attr="visible_repositories"),
    )


def visible_plan(image: Image, user: Any) -> dict[str, Any]:
    """What ``user`` deleting ``image`` does, as the image page's delete button: the image
    (and the bytes that frees, counted over every image, as they must be true), or only
    their teams' names of it while other teams name it too; naming only the containers and
    tags ``user`` sees."""
    allowed, stays = True, False
    if restrict(Image.objects.filter(pk=image.pk), user, DELETE).exists():
        plan = image_delete_plan(image)
    else:
        try:
            plan = image_remove_plan(image=image.manifest_digest, force=True, user=user)
            stays = True
        except PermissionDenied:
            plan, allowed = image_delete_plan(image), False
    containers = restrict(Container.objects.filter(name__in=plan.containers), user, VIEW)
    mine = set(image_references(image))
    return {
        "allowed": allowed,
        "image_stays": stays,
        "frees_bytes": plan.frees_bytes,
        "frees_by_host": plan.host_snapshots,
        "held_bytes": plan.held_bytes,
        "blobs": len(plan.blobs),
        "snapshots": len(plan.snapshots),
        "untagged": [name for name in plan.untagged if name in mine],
        "blocked": plan.blocked,
        "containers": sorted(containers.values_list("name", flat=True)),
    }


@extend_schema(tags=["images"])
class ImageViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    RestrictedViewSet[Image],
):
    """The catalog's images with their sizes (SIZE, SHARED SIZE, UNIQUE SIZE), as far as the
    user sees them."""

    queryset = Image.objects.all()
    serializer_class = ImageSerializer
    filterset_class = ImageFilter
    lookup_value_regex = "[0-9]{1,18}"
    # deleting is the service's to decide (the image, or only the user's teams' names of it
    # while other teams name it too); pushing and saving read it (a push's team is checked
    # as its own act)
    permission_actions = {"destroy": VIEW, "push": VIEW, "save": VIEW}

    def get_queryset(self) -> QuerySet[Image]:
        return with_visible_names(images_with_sizes(super().get_queryset()), self.request.user)

    def get_serializer_class(self) -> Any:
        return ImageDetailSerializer if self.action == "retrieve" else ImageSerializer

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        if self.action == "import_archive":
            self._prepare_upload(request)
        super().initial(request, *args, **kwargs)

    def _prepare_upload(self, request: Request) -> None:
        """Before anything reads the body (the session's CSRF check would), refuse one past
        the limit and stream the archive straight to its file under LAYERHUB_UPLOAD_DIR."""
        try:
            announced = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            announced = 0
        limit = settings.LAYERHUB_UPLOAD_MAX_BYTES
        if announced > limit + UPLOAD_OVERHEAD:
            raise PayloadTooLarge(
                f"the archive is larger than the upload limit ({limit} bytes, "
                "LAYERHUB_UPLOAD_MAX): import it with `manage.py import PATH` on the server"
            )
        self.upload_handler = ArchiveUploadHandler(
            request._request, settings.LAYERHUB_UPLOAD_DIR, limit
        )
        request._request.upload_handlers = [self.upload_handler]

    @extend_schema(summary="An image: layers, history, sizes, what deleting it frees")
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        image = self.get_object()
        rows = list(
            ImageLayer.objects.filter(image=image)
            .select_related("layer", "layer__parent")
            .order_by("position")
        )
        context = {
            **self.get_serializer_context(),
            "layers": rows,
            "sharing": layer_sharing([row.layer_id for row in rows], request.user),
            "history": image_history(image),
            "delete_plan": visible_plan(image, request.user),
        }
        return Response(ImageDetailSerializer(image, context=context).data)

    @extend_schema(
        summary="Delete the image and its tags (rmi --force), freeing what only it used; "
        "while other teams name it, only your teams' names of it go",
        responses={200: DELETED},
    )
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        image = self.get_object()
        frees = visible_plan(image, request.user)["frees_bytes"]
        lines = image_remove(image=image.manifest_digest, force=True, user=request.user)
        untagged = [line.split(": ", 1)[1] for line in lines if line.startswith("Untagged:")]
        deleted = [line.split(": ", 1)[1] for line in lines if line.startswith("Deleted:")]
        return Response({"untagged": untagged, "deleted": deleted, "freed_bytes": frees})

    @extend_schema(
        summary="What deleting the image would free, to the byte", responses=DeletePlanSerializer
    )
    @action(detail=True, methods=["get"], url_path="delete-plan")
    def delete_plan(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        return Response(DeletePlanSerializer(visible_plan(image, request.user)).data)

    @extend_schema(
        summary="The image's merged files: a directory's entries, or one entry",
        parameters=[PATH_PARAMETER],
        responses=PathSerializer,
    )
    @action(detail=True, methods=["get"])
    def files(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        path = asked_path(request)
        # read on a host that holds the layers: 404 when none does, 503 when none is up
        return Response(listing_body(image_snapshot_files(image).browse(path, content=False)))

    @extend_schema(
        summary="Wasted space: bytes of files a later layer replaced or removed (dive's figure, "
        "each superseded copy once), efficiency, duplicate bytes, the biggest wasted files",
        parameters=[
            OpenApiParameter(
                "limit", int, description=f"wasted files to list (default {WASTED_LIMIT})"
            )
        ],
        responses=ImageWastedSerializer,
    )
    @action(detail=True, methods=["get"])
    def wasted(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        try:
            limit = int(request.query_params.get("limit") or WASTED_LIMIT)
        except ValueError:
            raise serializers.ValidationError({"limit": "a whole number"}) from None
        limit = min(max(0, limit), WASTED_LIMIT_MAX)
        return Response(image_wasted_body(image_wasted(image), limit))

    @extend_schema(
        summary="The image's file tree from its file index: a directory's entries (a page) with "
        "the providing layer, wasted copies and duplicated contents, or one entry",
        parameters=[
            PATH_PARAMETER,
            OpenApiParameter("page", int, description="page of a large directory (default 1)"),
        ],
        responses=ImageTreeSerializer,
    )
    @action(detail=True, methods=["get"])
    def tree(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        path = asked_path(request)
        try:
            page = int(request.query_params.get("page") or 1)
        except ValueError:
            raise serializers.ValidationError({"page": "a whole number"}) from None
        wasted = image_wasted(image, duplicates=False)
        tree = image_tree_page(wasted, path, page=page) if wasted.ready else None
        return Response(image_tree_body(wasted, path, tree))

    @extend_schema(
        summary="docker pull: queue a pull (202 with the job)",
        request=PullSerializer,
        responses={202: JobSerializer},
    )
    @action(detail=False, methods=["post"])
    def pull(self, request: Request) -> Response:
        form = PullSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        job = image_pull(
            reference=data["reference"],
            platform=data.get("platform") or None,
            user=acting_user(request.user),
            team=data["team"],
        )
        return job_accepted(request, job)

    @extend_schema(
        summary="docker load: upload an archive to import (202 with the job)",
        request={"multipart/form-data": ImportSerializer},
        responses={202: JobSerializer},
    )
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[MultiPartParser])
    def import_archive(self, request: Request) -> Response:
        handler: ArchiveUploadHandler = self.upload_handler
        uploads = [f for f in request.FILES.values() if isinstance(f, StoredUpload)]
        archive = request.FILES.get("archive")
        for other in uploads:
            if other is not archive:
                other.discard()  # only the archive is kept
        if handler.too_big:
            raise PayloadTooLarge("the archive is larger than the upload limit")
        form = ImportSerializer(data=request.data, context=self.get_serializer_context())
        try:
            form.is_valid(raise_exception=True)
            if not isinstance(archive, StoredUpload):
                raise ArchiveError("upload the archive as the 'archive' field")
            job = image_import(
                path=str(archive.path),
                platform=form.validated_data.get("platform") or None,
                user=request.user,
                team=form.validated_data["team"],
                upload=True,
            )
        except BaseException:
            if isinstance(archive, StoredUpload):
                archive.discard()
            raise
        if job.done:  # it could not be queued (or ran here already): the file is spent
            job_discard_upload(job=job)
        return job_accepted(request, job)

    @extend_schema(
        summary="docker push: queue a push with the team's registry login (202 with the job)",
        request=PushSerializer,
        responses={202: JobSerializer},
    )
    @action(detail=True, methods=["post"])
    def push(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        form = PushSerializer(data=request.data, context=self.get_serializer_context())
        form.is_valid(raise_exception=True)
        data = form.validated_data
        job = image_push(
            image=image.manifest_digest,
            reference=data.get("reference") or None,
            user=request.user,
            team=data["team"],
        )
        return job_accepted(request, job)

    @extend_schema(
        summary="docker save: write an archive (202 with the job; download it from the job)",
        request=SaveSerializer,
        responses={202: JobSerializer},
    )
    @action(detail=True, methods=["post"])
    def save(self, request: Request, pk: str) -> Response:
        image = self.get_object()
        form = SaveSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        job = image_save(
            images=[image.manifest_digest],
            path=export_path(),
            format=form.validated_data["format"],
            user=request.user,
        )
        return job_accepted(request, job)
