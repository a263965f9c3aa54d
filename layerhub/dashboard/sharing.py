"""The layer-sharing picture: which base carries whom, and how many bytes sharing saves."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from layerhub.core.views_placeholder import not_built


def sharing_page(request: HttpRequest) -> HttpResponse:
    """The whole catalog's sharing, drawn as one picture."""
    return not_built(request)
