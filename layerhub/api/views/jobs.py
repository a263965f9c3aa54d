"""Jobs: the list, one job with its per-layer progress, cancel, and the archive a save wrote."""

from __future__ import annotations

from typing import Any

from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from layerhub.api.base import RestrictedViewSet
from layerhub.api.filters import JobFilter
from layerhub.api.serializers.jobs import JobBriefSerializer, JobSerializer
from layerhub.core.permissions import CHANGE
from layerhub.jobs.models import Job
from layerhub.jobs.selectors import download_name, export_file
from layerhub.jobs.services import job_cancel


@extend_schema(tags=["jobs"])
class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, RestrictedViewSet[Job]):
    """Background work: pulls, unpacks, imports, commits, pushes, saves. Poll a job until
    its state is succeeded, failed or cancelled."""

    queryset = Job.objects.select_related("team", "created_by").order_by("-created_at", "-id")
    serializer_class = JobSerializer
    filterset_class = JobFilter
    lookup_value_regex = "[0-9]{1,18}"
    permission_actions = {"cancel": CHANGE}

    def get_serializer_class(self) -> Any:
        return JobBriefSerializer if self.action == "list" else JobSerializer

    def get_object(self) -> Job:
        job: Job = super().get_object()
        running = job.state == Job.State.RUNNING
        running = running or job.children.filter(state=Job.State.RUNNING).exists()
        # a job whose worker died is re-queued (or failed) before it is shown
        if running and Job.objects.reap_dead():
            job.refresh_from_db()
        return job

    @extend_schema(
        summary="Cancel a queued or running job (and the jobs it started)",
        request=None,
        responses=JobSerializer,
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        job = job_cancel(job=self.get_object(), user=request.user)
        return Response(JobSerializer(job, context=self.get_serializer_context()).data)

    @extend_schema(
        summary="The archive a finished save job wrote",
        responses={(200, "application/x-tar"): OpenApiResponse(OpenApiTypes.BINARY)},
    )
    @action(detail=True, methods=["get"])
    def download(self, request: Request, pk: str) -> FileResponse:
        job = self.get_object()
        path = export_file(job)
        if path is None:
            raise Http404("no archive: not a save job, not finished, or its archive is gone")
        try:
            handle = open(path, "rb")  # noqa: SIM115 - FileResponse closes it
        except FileNotFoundError:
            raise Http404("the archive is gone") from None
        return FileResponse(
            handle,
            as_attachment=True,
            filename=download_name(job),
            content_type="application/x-tar",
        )
