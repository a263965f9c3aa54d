"""Each host's snapshot cache, kept under LAYERHUB_SNAPSHOT_CACHE_MAX bytes.

A host's snapshots are a cache of its layers' blobs: any of them is unpacked again from its
blob when something on the host stands on it once more (``image_snapshots_ensure``). Past the
limit, the snapshots used least recently (``Snapshot.used_at``) go first, until the cache is
under it again. Never evicted:

- a snapshot of the image of a container on this host (its commands, files and commit);
- one a running job has leased (a pull, an unpack, a commit, a dedup under way);
- one used in the last LAYERHUB_SNAPSHOT_CACHE_IDLE (a container being created, a page or a
  package scan reading it: they hold no lease);
- one whose layer's blob is not in the store: there would be nothing to unpack it from.

What these keep may hold the cache over its limit for a while; a later pass evicts what has
become free. The cache's size is its Snapshot rows' sizes, the figure the Hosts table and
/healthz show.

One snapshot is evicted under its lock (where unpacks judge it "already there" and deletes
look at leases): the checks again, then its row is deleted only if its recorded use is still
older than the pass allows, then its tree is renamed into tmp/ and deleted
(``SnapshotStore.remove``). A use recorded meanwhile (``snapshots_use``, written before the
user looks at the trees) turns the row's delete into a no-op and the tree stays; a crash after
the row went leaves a tree no row names, which the next use records again. Never a row naming
a tree that is gone.

Runs on each host for its own snapshots: at the end of a pull or an unpack there, from the
worker's housekeeping every LAYERHUB_JOB_HEARTBEAT seconds, and with ``manage.py snapshots
--evict``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine.store import LocalBlobs
from layerhub.hosts.models import current_host
from layerhub.images.dedup_links import dedup_freed_delta
from layerhub.images.leases import LIVE_STATES, lease_held
from layerhub.images.models import Blob, DedupLink, ImageLayer, Snapshot
from layerhub.images.snapshots import cache_idle, host_snapshot_usage
from layerhub.jobs.models import Lease

logger = logging.getLogger(__name__)

KEPT_CONTAINER = "a container on this host stands on it"
KEPT_LEASE = "a running job holds it"
KEPT_NO_BLOB = "its layer's blob is not in the store: it could not be unpacked again"


@dataclass(frozen=True)
class CachedSnapshot:
    """One snapshot of this host's cache, and why eviction leaves it ("" when it may go)."""

    pk: int
    layer_id: int
    chain_id: str
    digest: str
    size: int
    used_at: datetime
    kept: str


def snapshot_cache_list(*, now: datetime | None = None) -> list[CachedSnapshot]:
    """This host's snapshots, least recently used first, each with why eviction would leave
    it. One query."""
    return list(_cached(now or timezone.now()))


def _cached(now: datetime) -> Iterator[CachedSnapshot]:
    """``snapshot_cache_list``, read as it is consumed."""
    here = current_host()
    idle = cache_idle()
    recent = f"used in the last {timesince(now - idle, now)}"
    rows = (
        Snapshot.objects.filter(host=here)
        .annotate(
            leased=Exists(
                Lease.objects.filter(key=OuterRef("layer__chain_id"), job__state__in=LIVE_STATES)
            ),
            contained=Exists(
                ImageLayer.objects.filter(
                    layer_id=OuterRef("layer_id"), image__containers__host=here
                )
            ),
            has_blob=Exists(Blob.objects.filter(digest=OuterRef("layer__digest"))),
        )
        .order_by("used_at", "pk")
        .values_list(
            "pk",
            "layer_id",
            "layer__chain_id",
            "layer__digest",
            "size",
            "used_at",
            "leased",
            "contained",
            "has_blob",
        )
        .iterator(chunk_size=1000)
    )
    for pk, layer_id, chain, digest, size, used_at, leased, contained, has_blob in rows:
        if contained:
            kept = KEPT_CONTAINER
        elif leased:
            kept = KEPT_LEASE
        elif not has_blob:
            kept = KEPT_NO_BLOB
        elif used_at >= now - idle:
            kept = recent
        else:
            kept = ""
        yield CachedSnapshot(pk, layer_id, chain, digest, size, used_at, kept)


@dataclass
class EvictionReport:
    """What an eviction pass took from this host's cache (or, dry, would take)."""

    limit: int
    cached_bytes: int  # the cache before the pass
    dry_run: bool = False
    evicted: list[CachedSnapshot] = field(default_factory=list)
    # chosen, but used or leased by the time its turn came: left in place
    spared: list[str] = field(default_factory=list)
    # what evicting frees on disk: a file dedup linked into a snapshot that stays frees nothing
    freed_bytes: int = 0

    @property
    def remaining_bytes(self) -> int:
        """The cache's size after the pass (its rows' sizes)."""
        return self.cached_bytes - sum(item.size for item in self.evicted)

    def lines(self, now: datetime | None = None) -> list[str]:
        """One line per snapshot evicted, then the totals, as ``docker system prune``."""
        now = now or timezone.now()
        verb = "Would evict" if self.dry_run else "Evicted"
        out = [
            f"{verb}: {item.chain_id} ({human_size(item.size)}, last used "
            f"{timesince(item.used_at, now).split(',')[0]} ago)"
            for item in self.evicted
        ]
        out += [f"Kept (in use since it was chosen): {chain}" for chain in self.spared]
        if not self.evicted:
            out.append("Nothing to evict")
        frees = "Would free" if self.dry_run else "Freed"
        out.append(
            f"{frees} {human_size(self.freed_bytes)}; the cache "
            f"{'would hold' if self.dry_run else 'holds'} {human_size(self.remaining_bytes)} "
            f"of its {human_size(self.limit)}"
        )
        if self.remaining_bytes > self.limit:
            out.append(
                "The rest is kept: in use by containers or running jobs, used lately, or "
                "without a blob to unpack it from (manage.py snapshots says which)"
            )
        return out


def snapshot_cache_evict(*, limit: int, dry_run: bool = False) -> EvictionReport:
    """Evict this host's least recently used snapshots that may go until its cache holds at
    most ``limit`` bytes (0: every one that may go); with ``dry_run``, only say which."""
    now = timezone.now()
    report = EvictionReport(limit=limit, cached_bytes=host_snapshot_usage()[1], dry_run=dry_run)
    excess = report.cached_bytes - limit
    chosen = []
    if excess > 0:
        for item in _cached(now):  # read only as far as the choice needs
            if not item.kept:
                chosen.append(item)
                excess -= item.size
                if excess <= 0:
                    break
    # read before the links go with the rows
    linked = dedup_freed_delta([item.chain_id for item in chosen])
    used_before = now - cache_idle()
    for item in chosen:
        if dry_run or _evict(item, used_before=used_before):
            report.evicted.append(item)
            report.freed_bytes += item.size + linked.get(item.chain_id, 0)
        else:
            report.spared.append(item.chain_id)
    return report


def _evict(item: CachedSnapshot, *, used_before: datetime) -> bool:
    """Evict one snapshot unless, looked at again under its lock, something holds it now;
    whether its row went."""
    store = get_store()

    def held() -> bool:
        # the lease first, as every delete looks (see layerhub.images.leases)
        return (
            lease_held(item.chain_id)
            or ImageLayer.objects.filter(
                layer_id=item.layer_id, image__containers__host=current_host()
            ).exists()
            or not _blob_present(item.digest)
        )

    def keep() -> bool:  # under the snapshot's lock: True leaves the tree
        if held():
            return True
        with transaction.atomic():
            # only while no use was recorded since the pass began; the row before the tree
            gone, _ = Snapshot.objects.filter(pk=item.pk, used_at__lt=used_before).delete()
            if gone:
                # dedup's links of this layer were links in this tree
                DedupLink.objects.filter(layer_id=item.layer_id).delete()
        return not gone

    if store.snapshots.remove(item.chain_id, keep=keep):
        return True
    if store.snapshots.exists(item.chain_id):
        return False
    # a row naming a tree that was gone already: it goes, as the tree did
    gone, _ = Snapshot.objects.filter(pk=item.pk, used_at__lt=used_before).delete()
    return gone > 0


def _blob_present(digest: str) -> bool:
    """Whether the layer's blob is there to unpack the snapshot from again: its Blob row (the
    catalog's record of it, which garbage collection keeps while a layer row names the
    blob), and in the store's own blobs/ its file. An object store is not asked: the worker's
    main process evicts too, and a request from there would start the object store client's
    threads in the process its pool children are forked from, which they cannot use."""
    if not Blob.objects.filter(digest=digest).exists():
        return False
    blobs = get_store().blobs
    return blobs.has(digest) if isinstance(blobs, LocalBlobs) else True


def snapshot_cache_trim() -> EvictionReport | None:
    """Evict down to LAYERHUB_SNAPSHOT_CACHE_MAX while this host's cache is past it (what a
    pull, an unpack and the worker's housekeeping call). One aggregate query when no
    eviction is due; nothing without a limit.

    Failures are logged, never raised: the pull that calls it has done its work, and the
    next pass tries again."""
    limit = settings.LAYERHUB_SNAPSHOT_CACHE_MAX
    if not limit:
        return None
    try:
        if host_snapshot_usage()[1] <= limit:
            return None
        report = snapshot_cache_evict(limit=limit)
    except Exception:
        logger.exception("evicting from the snapshot cache of host %s failed", current_host())
        return None
    if report.evicted:
        logger.info(
            "evicted %d snapshots (%s) from the cache of host %s: it holds %s of its %s",
            len(report.evicted),
            human_size(report.freed_bytes),
            current_host(),
            human_size(report.remaining_bytes),
            human_size(limit),
        )
    return report
