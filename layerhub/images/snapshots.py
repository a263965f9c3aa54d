"""Which layers are unpacked on this host: each host keeps its own snapshots (Snapshot rows).

"Is this layer unpacked?" always means "on this host" (LAYERHUB_HOST); another host's
snapshot of the same layer is no use to a container here.

Each use of a snapshot is recorded on its row (``used_at``), at most about once a minute, for
the cache to evict the least recently used first (``layerhub.images.snapshot_cache``): what
stands on snapshots records the use before it looks whether the trees are there, so an
eviction either comes first (the trees are found missing and unpacked again) or sees the use
and leaves them.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
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
    """Record that this host holds ``layer``'s snapshot, measured at ``size`` bytes (and
    used now: it was made for something about to stand on it)."""
    now = timezone.now()
    Snapshot.objects.update_or_create(
        layer=layer,
        host=current_host(),
        defaults={"size": size, "file_count": file_count, "created_at": now, "used_at": now},
    )


# a use is recorded again once the recorded one is this old (or half the cache's idle time)
USE_EVERY = timedelta(minutes=1)


def cache_idle() -> timedelta:
    """LAYERHUB_SNAPSHOT_CACHE_IDLE: a snapshot used more recently is never evicted."""
    idle: timedelta | None = settings.LAYERHUB_SNAPSHOT_CACHE_IDLE
    return idle or timedelta(0)  # never None: the setting cannot be "off"


def use_every() -> timedelta:
    """How old a snapshot's recorded use may get before a new use is written: a minute, or
    half of LAYERHUB_SNAPSHOT_CACHE_IDLE when that is shorter, so a snapshot is kept at least
    half that long after any use whose write was skipped."""
    return min(USE_EVERY, cache_idle() / 2)


def snapshots_use(rows: Iterable[tuple[int, datetime]]) -> bool:
    """Record a use now of this host's Snapshot ``rows`` ((pk, used_at) as the caller read
    them) whose recorded use is older than ``use_every``; one UPDATE, none when every use
    is recent. False when a row to update was gone (evicted since it was read): the caller
    then looks again."""
    now = timezone.now()
    stale = [pk for pk, used_at in rows if used_at < now - use_every()]
    if not stale:
        return True
    return Snapshot.objects.filter(pk__in=stale).update(used_at=now) == len(stale)


def snapshots_use_chains(chain_ids: Iterable[str]) -> None:
    """Record a use now of this host's snapshots of ``chain_ids`` (those it holds)."""
    snapshots_use(
        Snapshot.objects.filter(
            host=current_host(), layer__chain_id__in=list(chain_ids)
        ).values_list("pk", "used_at")
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
