"""Reading the hosts' health for /healthz and the dashboard."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

from layerhub.hosts.models import Host, current_host
from layerhub.hosts.routing import host_unavailable_message


@dataclass(frozen=True)
class HostHealth:
    """One host as its worker last reported it, and whether it is there now."""

    name: str
    heartbeat_at: datetime
    free_bytes: int | None
    snapshot_count: int
    snapshot_bytes: int
    snapshot_cache_max: int  # 0: no limit
    problem: str | None  # why it is unavailable; None when it is there
    this_host: bool

    @property
    def status(self) -> str:
        """``ok``, or ``unavailable: <why>``."""
        return "ok" if self.problem is None else f"unavailable: {self.problem}"

    def to_json(self) -> dict[str, object]:
        """What /healthz says of it."""
        return {
            "name": self.name,
            "status": self.status,
            "last_heartbeat": self.heartbeat_at.isoformat(),
            "free_bytes": self.free_bytes,
            "snapshot_count": self.snapshot_count,
            "snapshot_bytes": self.snapshot_bytes,
            "snapshot_cache_max": self.snapshot_cache_max or None,
        }


def hosts_health() -> list[HostHealth]:
    """Every host whose worker has ever reported, by name."""
    now = timezone.now()
    out = []
    for host in Host.objects.order_by("name"):
        message = host_unavailable_message(host.name, now=now) if not host.available else None
        if message is not None:
            message = message.split(": ", 1)[-1]
        out.append(
            HostHealth(
                name=host.name,
                heartbeat_at=host.heartbeat_at,
                free_bytes=host.free_bytes,
                snapshot_count=host.snapshot_count,
                snapshot_bytes=host.snapshot_bytes,
                snapshot_cache_max=host.snapshot_cache_max,
                problem=message,
                this_host=host.name == current_host(),
            )
        )
    return out


_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def _without_credentials(text: str) -> str:
    """``text`` with the AWS keys of this process and any URL's user:password@ masked."""
    for name in _SECRETS:
        value = os.environ.get(name, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return re.sub(r"(//)[^/@\s]+@", r"\1***@", text)


@dataclass(frozen=True)
class ObjectStoreHealth:
    """The shared object store the blobs live in, as this process reaches it: where (never
    its keys), whether it answers, and the blobs the catalog records there (its Blob rows:
    counted once for the fleet, without listing the bucket)."""

    location: str  # s3://bucket/prefix
    endpoint: str  # AWS_ENDPOINT_URL without credentials; empty: AWS
    problem: str | None  # why it does not answer; None when it does
    blob_count: int | None  # None when the database did not answer
    blob_bytes: int | None
    driver: str = "s3"

    @property
    def status(self) -> str:
        return "ok" if self.problem is None else f"unreachable: {self.problem}"

    def to_json(self) -> dict[str, object]:
        """What /healthz says of it."""
        return {
            "driver": self.driver,
            "location": self.location,
            "endpoint": self.endpoint or "aws",
            "status": self.status,
            "blob_count": self.blob_count,
            "blob_bytes": self.blob_bytes,
        }


def object_store_health() -> ObjectStoreHealth | None:
    """The object store's health, or None when the blobs are the store's own directory
    (whose health is the store's)."""
    from django.db import DatabaseError
    from django.db.models import Count, Sum

    from layerhub.core.store import get_store
    from layerhub.engine.blobstore.s3 import S3Blobs
    from layerhub.images.models import Blob

    blobs = get_store().blobs
    if not isinstance(blobs, S3Blobs):
        return None
    problem = None
    try:
        blobs.ping()
    except Exception as exc:  # a health check reports every failure rather than raising
        problem = _without_credentials(str(exc) or type(exc).__name__)
    count: int | None = None
    size: int | None = None
    try:
        totals = Blob.objects.aggregate(count=Count("pk"), size=Sum("size"))
        count, size = int(totals["count"]), int(totals["size"] or 0)
    except DatabaseError:
        pass  # the database's own check says what is wrong
    return ObjectStoreHealth(
        location=blobs.where(),
        endpoint=_without_credentials(blobs.endpoint),
        problem=problem,
        blob_count=count,
        blob_bytes=size,
    )
