"""Dashboard views: read, then render; no business logic here."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe

from layerhub.core.store import get_store


@require_safe
def home(request: HttpRequest) -> HttpResponse:
    """The store at a glance: blobs, snapshots and containers, counted on disk."""
    context = {"usage": get_store().usage(), "store_root": Path(settings.LAYERHUB_STORE)}
    return render(request, "dashboard/home.html", context)
