"""Views of layerhub.core: the health check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from layerhub.core.store import get_store

if TYPE_CHECKING:
    from layerhub.hosts.selectors import ObjectStoreHealth

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


def _hosts() -> list[dict[str, object]]:
    from layerhub.hosts.selectors import hosts_health

    try:
        return [host.to_json() for host in hosts_health()]
    except Exception:  # the database's own check says what is wrong
        return []


def _object_store() -> ObjectStoreHealth | None:
    from layerhub.hosts.selectors import object_store_health

    return object_store_health()


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """``{"database": "ok", "store": "ok"}``; 503 with the failing part's error otherwise.

    Once workers have reported, ``hosts`` lists each host (its status, last heartbeat, free
    disk and snapshot cache): a host that is gone is reported there, and leaves this
    process's own status (the code) alone. With blobs in an object store, ``object_store``
    says where (never its keys), whether it answers (503 when not: no pull or push would
    work) and the blobs the catalog records there."""
    checks: dict[str, object] = {"database": _database_status(), "store": _store_status()}
    healthy = all(status == OK for status in checks.values())
    hosts = _hosts() if checks["database"] == OK else []
    if hosts:
        checks["hosts"] = hosts
    if checks["store"] == OK:
        shared = _object_store()
        if shared is not None:
            checks["object_store"] = shared.to_json()
            healthy = healthy and shared.problem is None  # no pull or push works without it
    return JsonResponse(checks, status=200 if healthy else 503)
