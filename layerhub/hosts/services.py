"""Each host's heartbeat: what its worker records every LAYERHUB_JOB_HEARTBEAT seconds."""

from __future__ import annotations

from django.conf import settings
from django.utils import timezone

from layerhub.core.store import get_store
from layerhub.hosts.models import Host, current_host
from layerhub.images.snapshots import host_snapshot_usage


def host_heartbeat() -> Host:
    """Stamp this host's row: now, the free space of its store's file system, the size of
    its snapshot cache (its Snapshot rows, measured when each was made) and that cache's
    limit (LAYERHUB_SNAPSHOT_CACHE_MAX)."""
    count, total = host_snapshot_usage()
    try:
        free: int | None = get_store().free_bytes()
    except OSError:
        free = None
    host, _ = Host.objects.update_or_create(
        name=current_host(),
        defaults={
            "heartbeat_at": timezone.now(),
            "free_bytes": free,
            "snapshot_count": count,
            "snapshot_bytes": total,
            "snapshot_cache_max": settings.LAYERHUB_SNAPSHOT_CACHE_MAX,
            "stopped_at": None,
        },
    )
    return host


def host_leave() -> None:
    """Record that this host's worker stopped: its containers are unavailable at once."""
    Host.objects.filter(name=current_host()).update(stopped_at=timezone.now())
