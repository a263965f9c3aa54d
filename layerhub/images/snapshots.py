"""Which layers are unpacked on this host: each host keeps its own snapshots (Snapshot rows).

"Is this layer unpacked?" always means "on this host" (LAYERHUB_HOST); another host's
snapshot of the same layer is no use to a container here.
"""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Q, QuerySet, Sum
from django.utils import timezone

from layerhub.hosts.models import current_host
from layerhub.images.models import Layer, Snapshot


def layers_not_unpacked_here(layers: QuerySet[Layer]) -> QuerySet[Layer]:
    """``layers`` without a snapshot recorded on this host (or whose size was never
    recorded)."""
    here = Snapshot.objects.filter(layer=OuterRef("pk"), host=current_host())
    return layers.filter(Q(unpacked_at=None) | ~Exists(here))


def snapshot_record(*, layer: Layer, size: int, file_count: int | None) -> None:
    """Record that this host holds ``layer``'s snapshot, measured at ``size`` bytes."""
    Snapshot.objects.update_or_create(
        layer=layer,
        host=current_host(),
        defaults={"size": size, "file_count": file_count, "created_at": timezone.now()},
    )


def snapshot_forget(*, chain_id: str) -> int:
    """Forget this host's snapshot of ``chain_id`` (its tree was removed here); other hosts'
    rows stay. Returns how many rows went."""
    deleted, _ = Snapshot.objects.filter(layer__chain_id=chain_id, host=current_host()).delete()
    return deleted


def host_snapshot_usage(host: str | None = None) -> tuple[int, int]:
    """How many snapshots ``host`` (this one by default) holds, and their bytes."""
    found = Snapshot.objects.filter(host=host or current_host()).aggregate(
        n=Count("pk"), total=Sum("size")
    )
    return int(found["n"] or 0), int(found["total"] or 0)
