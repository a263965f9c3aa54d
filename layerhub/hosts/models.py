"""Hosts: each machine (LAYERHUB_HOST) whose worker keeps a snapshot cache and containers."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


def current_host() -> str:
    """This process's host name (settings.LAYERHUB_HOST)."""
    return str(settings.LAYERHUB_HOST)


def gone_before(now: datetime | None = None) -> datetime:
    """A host whose last heartbeat is older than this is gone (LAYERHUB_HOST_GONE_AFTER)."""
    return (now or timezone.now()) - timedelta(seconds=settings.LAYERHUB_HOST_GONE_AFTER)


class Host(models.Model):
    """One host's health, stamped by its worker every LAYERHUB_JOB_HEARTBEAT seconds: the
    free space of its LAYERHUB_STORE file system, the bytes of its snapshot cache (the sum
    of its Snapshot rows) and the limit it keeps that cache under. A row is kept when the
    worker stops, so a host that went away is shown as unavailable rather than forgotten."""

    name = models.CharField(max_length=100, unique=True)
    heartbeat_at = models.DateTimeField()
    started_at = models.DateTimeField(default=timezone.now)
    free_bytes = models.BigIntegerField(null=True, blank=True)
    snapshot_count = models.BigIntegerField(default=0)
    snapshot_bytes = models.BigIntegerField(default=0)
    # its LAYERHUB_SNAPSHOT_CACHE_MAX: the bytes its snapshot cache is kept under (0: no limit)
    snapshot_cache_max = models.BigIntegerField(default=0)
    # the worker said it stopped (a clean shutdown): gone at once, not after the timeout
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def available(self) -> bool:
        """Whether its worker stamped a heartbeat lately and has not said it stopped."""
        return self.stopped_at is None and self.heartbeat_at >= gone_before()
