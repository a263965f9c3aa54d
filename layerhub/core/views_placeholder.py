"""A page that is not built yet says so (replaced page by page as the dashboard grows)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def not_built(request: HttpRequest, **kwargs: object) -> HttpResponse:
    """The placeholder: a page in the site's style naming what will be here."""
    return render(request, "placeholder.html", {"path": request.path}, status=501)
