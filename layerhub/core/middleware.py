"""Errors a user can cause, shown as a page (or an htmx fragment) with their message."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from layerhub.engine.errors import (
    BlobNotFound,
    Conflict,
    ContainerNotFound,
    ImageNotFound,
    LayerhubError,
    PathNotFound,
    RegistryUnavailable,
    SnapshotNotFound,
)

# the HTTP status for each kind of user error; anything else a user caused is a 400
STATUS_FOR: tuple[tuple[type[LayerhubError], int], ...] = (
    (ImageNotFound, 404),
    (ContainerNotFound, 404),
    (PathNotFound, 404),
    (BlobNotFound, 404),
    (SnapshotNotFound, 404),
    (Conflict, 409),
    (RegistryUnavailable, 503),
)


def user_error_status(exc: LayerhubError) -> int:
    """The HTTP status that answers ``exc``."""
    from layerhub.hosts.routing import HostUnavailable
    from layerhub.jobs.services import BrokerUnavailable

    if isinstance(exc, (BrokerUnavailable, HostUnavailable)):
        return 503
    return next((status for kind, status in STATUS_FOR if isinstance(exc, kind)), 400)


class UserErrorMiddleware:
    """Turns a LayerhubError escaping a view into the error page; bugs still go to Django's
    500 handling (logged, and the site's 500 page)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, LayerhubError):
            return None
        status = user_error_status(exception)
        template = "htmx/error.html" if getattr(request, "htmx", False) else "error.html"
        return render(request, template, {"message": str(exception)}, status=status)
