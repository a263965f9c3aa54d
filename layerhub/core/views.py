"""Views of layerhub.core: the health check."""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from layerhub.core.store import get_store

OK = "ok"


def _database_status() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # a health check reports every failure rather than raising
        return f"error: {type(exc).__name__}: {exc}"
    return OK


def _store_status() -> str:
    root = Path(settings.LAYERHUB_STORE)
    try:
        get_store()
    except Exception as exc:  # a health check reports every failure rather than raising
        return f"error: {type(exc).__name__}: {exc}"
    if not root.is_dir():
        return f"error: {root} is not a directory"
    if not os.access(root, os.W_OK | os.X_OK):
        return f"error: {root} is not writable"
    return OK


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """``{"database": "ok", "store": "ok"}``; 503 with the failing part's error otherwise."""
    checks = {"database": _database_status(), "store": _store_status()}
    healthy = all(status == OK for status in checks.values())
    return JsonResponse(checks, status=200 if healthy else 503)
