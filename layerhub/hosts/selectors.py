"""Reading the hosts' health for /healthz and the dashboard."""

from __future__ import annotations

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
                problem=message,
                this_host=host.name == current_host(),
            )
        )
    return out
