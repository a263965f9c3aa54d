"""The base of every viewset: its queryset through ``restrict()``, the permission action each
endpoint needs, and 202 answers for the endpoints that start a job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from django.db.models import Model, QuerySet
from rest_framework import status
from rest_framework.permissions import SAFE_METHODS
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.viewsets import GenericViewSet

from layerhub.core.permissions import CHANGE, DELETE, VIEW, restrict
from layerhub.jobs.models import Job

M = TypeVar("M", bound=Model)


class JSONAnswers:
    """Answer in JSON whatever the request's Accept header asks (an error included), rather
    than refusing with 406: there is one format."""

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return super().perform_content_negotiation(request, force=True)  # type: ignore[misc]


class LayerhubAPIView(JSONAnswers, APIView):
    """An API view that is not over one model (``system/df``, search)."""


class RestrictedViewSet(JSONAnswers, GenericViewSet[M], Generic[M]):
    """A viewset over ``queryset`` narrowed to what the user may see: an object outside it is
    a 404. ``permission_actions`` names the action (layerhub.core.permissions) each endpoint
    needs on its object; unnamed ones need VIEW when safe, CHANGE otherwise (DELETE for
    ``destroy``)."""

    permission_actions: ClassVar[dict[str, str]] = {}

    def permission_action(self) -> str:
        """The action this request needs on its object."""
        name = self.action or ""
        if name in self.permission_actions:
            return self.permission_actions[name]
        if name == "destroy":
            return DELETE
        return VIEW if self.request.method in SAFE_METHODS else CHANGE

    def get_queryset(self) -> QuerySet[M]:
        return restrict(super().get_queryset(), self.request.user, VIEW)


def job_accepted(request: Request, job: Job) -> Response:
    """202 Accepted with the job that does the work (poll it at ``/api/v1/jobs/<id>/``)."""
    from layerhub.api.serializers.jobs import JobSerializer

    body = JobSerializer(job, context={"request": request}).data
    return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": body["url"]})


def context_user(context: Mapping[str, Any]) -> Any:
    """The request's user, from a serializer's context (None without a request)."""
    request = context.get("request")
    return getattr(request, "user", None)
