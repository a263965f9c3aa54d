"""What a garbage collection deletes: the marks read from the rows, judged against what the
store and the export and upload folders hold (see ``layerhub.images.gc``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet

from layerhub.containers.models import Container
from layerhub.core.store import get_store
from layerhub.engine import fsutil
from layerhub.engine.blobstore.base import PendingUpload
from layerhub.engine.errors import BlobStoreUnavailable
from layerhub.images.dedup_links import dedup_freed_delta
from layerhub.images.gc.report import Garbage
from layerhub.images.leases import LIVE_STATES
from layerhub.images.models import Blob, Image, ImageLayer, Layer, Tag
from layerhub.images.sizes import DeletePlan, images_delete_plan, layers_with_ancestors
from layerhub.images.usage import held_by_a_process
from layerhub.jobs.models import Job, Lease


@dataclass(frozen=True)
class _Entry:
    """A directory entry, as lstat saw it."""

    path: Path
    mode: int
    mtime: float
    size: int


@dataclass
class Disk:
    """What the store and the upload and export folders hold, listed before the marks are
    read: anything made after the listing is not judged by this collection."""

    blobs: dict[str, int] = field(default_factory=dict)  # digest -> file length
    snapshots: set[str] = field(default_factory=set)  # ChainIDs
    containers: dict[str, _Entry] = field(default_factory=dict)  # container ID -> dir
    tmp: dict[str, _Entry] = field(default_factory=dict)  # name -> entry
    exports: dict[str, _Entry] = field(default_factory=dict)
    uploads: dict[str, _Entry] = field(default_factory=dict)
    # the object store's multipart uploads left pending, and why they could not be listed
    multipart: list[PendingUpload] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def _entries(folder: Path) -> dict[str, _Entry]:
    found: dict[str, _Entry] = {}
    try:
        scan = os.scandir(folder)
    except FileNotFoundError:
        return found
    with scan:
        for entry in scan:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            found[entry.name] = _Entry(Path(entry.path), st.st_mode, st.st_mtime, st.st_size)
    return found


def _is_hex(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def on_disk() -> Disk:
    """List what the blob store (the store's blobs/, or the object store every host shares,
    with its multipart uploads left pending), the store's snapshots/, containers/ and tmp/,
    and the export and upload folders, hold now (no tree is walked)."""
    store = get_store()
    disk = Disk()
    for blob in store.blobs.list():
        # anything else there is not a blob this collection can name: left for people
        if blob.digest is not None:
            disk.blobs[blob.digest] = blob.size
    if settings.LAYERHUB_GC_KEEP_MULTIPART is not None:
        try:
            disk.multipart = list(store.blobs.pending_uploads())
        except BlobStoreUnavailable as exc:  # the rest of the collection goes on
            disk.left.append(f"multipart uploads left pending: {exc}")
    disk.snapshots = set(store.snapshots.chain_ids())
    disk.containers = _entries(store.containers)
    disk.tmp = _entries(store.tmp)
    disk.exports = _entries(Path(settings.LAYERHUB_EXPORT_DIR))
    disk.uploads = _entries(Path(settings.LAYERHUB_UPLOAD_DIR))
    return disk


def _measure(path: Path, entry: _Entry | None = None) -> int:
    """Bytes of the regular files at or under ``path`` (a hardlinked file once), as the
    store's usage counts them; 0 for anything gone meanwhile."""
    if entry is not None and not stat.S_ISDIR(entry.mode):
        return entry.size if stat.S_ISREG(entry.mode) else 0
    try:
        return fsutil.tree_usage(path)[0]
    except FileNotFoundError:
        return 0


def _measure_snapshot(path: Path) -> int:
    """What removing a snapshot no row records frees: a file dedup hardlinked into another
    snapshot stays with that one."""
    try:
        return fsutil.tree_freed_bytes(path)
    except FileNotFoundError:
        return 0


# -- the plan -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a collection deletes, judged from one reading of the rows."""

    images: list[Image] = field(default_factory=list)
    image_plan: DeletePlan = field(default_factory=DeletePlan)
    layer_rows: list[str] = field(default_factory=list)  # ChainIDs, top first
    blobs: list[Garbage] = field(default_factory=list)
    multipart: list[Garbage] = field(default_factory=list)
    # the uploads to abort, by their item's key
    aborts: dict[str, PendingUpload] = field(default_factory=dict)
    snapshots: list[Garbage] = field(default_factory=list)
    containers: list[Garbage] = field(default_factory=list)
    tmp: list[Garbage] = field(default_factory=list)
    exports: list[Garbage] = field(default_factory=list)
    uploads: list[Garbage] = field(default_factory=list)
    jobs: list[Garbage] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    # ChainIDs of layer rows that go with no tree on disk (never unpacked, or gone)
    absent: set[str] = field(default_factory=set)
    # ChainIDs of trees no row records a size for: measured by ``measure`` (0 until then)
    unmeasured: set[str] = field(default_factory=set)

    def items(self) -> list[Garbage]:
        """Every item, in the order the report lists them."""
        return [
            *self.image_items(),
            *self.snapshots,
            *self.blobs,
            *self.multipart,
            *self.containers,
            *self.tmp,
            *self.exports,
            *self.uploads,
            *self.jobs,
        ]

    def image_items(self) -> list[Garbage]:
        """The untagged images that go (rows: their bytes are their layers' and blobs')."""
        return [
            Garbage(
                "image",
                image.config_digest,
                0,
                f"untagged, added {image.added_at:%Y-%m-%d %H:%M} (its layers and blobs are "
                "listed below)",
            )
            for image in self.images
        ]


def _depth(pk: int, parent_of: dict[int, int | None], memo: dict[int, int]) -> int:
    chain: list[int] = []
    current: int | None = pk
    while current is not None and current not in memo and current in parent_of:
        chain.append(current)
        current = parent_of[current]
    depth = memo.get(current, 0) if current is not None else -1
    for layer in reversed(chain):
        depth += 1
        memo[layer] = depth
    return memo[pk]


def _untagged_to_prune(now: datetime, leased: set[str]) -> list[Image]:
    keep = settings.LAYERHUB_GC_KEEP_UNTAGGED
    if keep is None:
        return []
    busy = Job.objects.filter(state__in=LIVE_STATES, image__isnull=False).values("image_id")
    candidates = (
        Image.objects.filter(added_at__lt=now - keep)
        .filter(~Exists(Tag.objects.filter(image=OuterRef("pk"))))
        .filter(~Exists(Container.objects.filter(image=OuterRef("pk"))))
        .exclude(pk__in=busy)
        .order_by("added_at", "pk")
    )
    # an image a running job has leased is about to be recorded again (its tag put back)
    return [image for image in candidates if image.manifest_digest not in leased]


def make_plan(disk: Disk, now: datetime) -> Plan:
    """Judge which images, layer rows, snapshots and blobs go: the marks, read now, against
    what ``disk`` listed. Reads rows only (a run holds the lease barrier meanwhile): trees
    no row records are measured afterwards (``measure``), and the folders and job rows are
    judged apart (``plan_folders``)."""
    plan = Plan()
    leased = set(Lease.objects.filter(job__state__in=LIVE_STATES).values_list("key", flat=True))
    plan.images = _untagged_to_prune(now, leased)
    if plan.images:
        plan.image_plan = images_delete_plan(plan.images)
    pruned = {image.pk for image in plan.images}
    planned_chains = {chain for chain, _ in plan.image_plan.snapshots}
    planned_blobs = {digest for digest, _ in plan.image_plan.blobs}

    # layers: what an image that stays uses, what a lease holds, and every layer below those
    reachable = {
        layer
        for image, layer in ImageLayer.objects.values_list("image_id", "layer_id").iterator(
            chunk_size=5000
        )
        if image not in pruned
    }
    rows = {
        pk: (chain, digest, parent, unpacked_at is not None, unpacked_size or 0)
        for pk, chain, digest, parent, unpacked_at, unpacked_size in Layer.objects.values_list(
            "pk", "chain_id", "digest", "parent_id", "unpacked_at", "unpacked_size"
        ).iterator(chunk_size=5000)
    }
    parent_of: dict[int, int | None] = {pk: row[2] for pk, row in rows.items()}
    kept = layers_with_ancestors(
        reachable | {pk for pk, row in rows.items() if row[0] in leased}, parent_of
    )
    memo: dict[int, int] = {}
    garbage_layers = sorted(
        (pk for pk in rows if pk not in kept), key=lambda pk: -_depth(pk, parent_of, memo)
    )
    plan.layer_rows = [rows[pk][0] for pk in garbage_layers if rows[pk][0] not in planned_chains]
    named_chains = {rows[pk][0] for pk in kept}
    named_blobs = {rows[pk][1] for pk in kept}
    for pk, manifest, config, index in Image.objects.values_list(
        "pk", "manifest_digest", "config_digest", "index_digest"
    ).iterator(chunk_size=5000):
        if pk not in pruned:
            named_blobs.update(d for d in (manifest, config, index) if d)

    # the untagged images' own layers and blobs, as their delete plan counts them
    of_images = "only the untagged images deleted here used it"
    for chain, size in plan.image_plan.snapshots:
        plan.snapshots.append(Garbage("snapshot", chain, size, of_images))
        if chain not in disk.snapshots:
            plan.absent.add(chain)
    recorded = dict(Blob.objects.values_list("digest", "size"))
    plan.blobs.extend(
        Garbage("blob", d, size, of_images)
        for d, size in plan.image_plan.blobs
        if d in disk.blobs or d in recorded  # a blob neither there nor recorded: nothing to do
    )
    plan.held.extend(f"{key}: leased by a running job" for key in plan.image_plan.held)

    # snapshots: every tree and every doomed layer row no staying row names
    garbage_rows = {rows[pk][0]: rows[pk] for pk in garbage_layers}
    for chain in sorted(disk.snapshots | set(plan.layer_rows)):
        if chain in named_chains or chain in planned_chains:
            continue
        if chain in leased:
            plan.held.append(f"snapshot {chain}: leased by a running job")
            continue
        row = garbage_rows.get(chain)
        if chain not in disk.snapshots:
            size, why = 0, "a layer row no image uses (its snapshot is not there)"
            plan.absent.add(chain)
        elif row is not None and row[3]:
            size, why = row[4], "no image uses this layer"
        else:
            size = 0
            plan.unmeasured.add(chain)
            why = "no image uses this layer" if row is not None else "no layer row names it"
        plan.snapshots.append(Garbage("snapshot", chain, size, why))
    # dedup's hardlinks: a shared file's bytes go with its last link, in the order of deletion
    recorded_size = {row[0]: row[4] for row in rows.values()}
    linked = dedup_freed_delta([item.key for item in plan.snapshots])
    plan.snapshots = [
        replace(item, size=recorded_size.get(item.key, 0) + linked[item.key])
        if item.key in linked
        else item
        for item in plan.snapshots
    ]

    # blobs: every file and every size row no staying row names
    for digest in sorted(set(disk.blobs) | set(recorded)):
        if digest in named_blobs or digest in planned_blobs:
            continue
        if digest in leased:
            plan.held.append(f"blob {digest}: leased by a running job")
            continue
        if digest not in disk.blobs:
            size, why = 0, "a size row whose file is gone, no image or layer names it"
        elif digest in recorded:
            size, why = recorded[digest], "no image or layer names it"
        else:
            size, why = disk.blobs[digest], "no row records it (a failed pull's or import's)"
        plan.blobs.append(Garbage("blob", digest, size, why))

    _plan_multipart(plan, disk, now, leased)
    return plan


def _plan_multipart(plan: Plan, disk: Disk, now: datetime, leased: set[str]) -> None:
    """The multipart uploads begun more than LAYERHUB_GC_KEEP_MULTIPART ago whose blob no
    running job has leased. A job that leases the blob after this judgement begins an upload
    of its own (another id, begun now), which is not among these."""
    keep: timedelta | None = settings.LAYERHUB_GC_KEEP_MULTIPART
    if keep is None:
        return
    blobs = get_store().blobs
    for upload in disk.multipart:
        label = f"multipart upload {upload.upload_id} of {upload.digest}"
        if upload.digest in leased:
            plan.held.append(f"{label}: its blob is leased by a running job")
        elif upload.initiated is None:
            plan.held.append(f"{label}: the object store did not say when it began")
        elif upload.initiated < now - keep:
            key = f"{blobs.where(upload.name)}?uploadId={upload.upload_id}"
            why = (
                f"begun {upload.initiated:%Y-%m-%d %H:%M} UTC, more than {_period(keep)} ago, "
                "and never completed: its parts, never a blob"
            )
            plan.multipart.append(Garbage("multipart", key, 0, why))
            plan.aborts[key] = upload


def measure(plan: Plan) -> None:
    """Measure the trees of the plan's snapshots no row records a size for, and the parts of
    the multipart uploads it aborts (outside the barrier's transaction: SQLite's writers
    wait on it)."""
    store = get_store()
    plan.snapshots = [
        replace(item, size=_measure_snapshot(store.snapshots.path(item.key)))
        if item.key in plan.unmeasured
        else item
        for item in plan.snapshots
    ]
    plan.unmeasured.clear()
    measured = []
    for item in plan.multipart:
        try:
            size = store.blobs.pending_upload_size(plan.aborts[item.key])
        except BlobStoreUnavailable as exc:  # aborted all the same; its bytes unknown
            plan.left.append(f"{item.key}: its size: {exc}")
            size = 0
        measured.append(replace(item, size=size))
    plan.multipart = measured


def plan_folders(plan: Plan, disk: Disk, now: datetime) -> None:
    """Add the containers' layers, tmp/ entries, saved archives, uploads and job rows that may
    go (none of them judged against leases: no barrier needed)."""
    grace_ts = grace_cutoff(now)
    rows = set(Container.objects.values_list("container_id", flat=True))
    for name, entry in sorted(disk.containers.items()):
        # a container's directory is made just before its row: young ones are left alone
        if name.isalnum() and name not in rows and entry.mtime < grace_ts:
            size = _measure(entry.path, entry)
            plan.containers.append(Garbage("container", name, size, "no container has it"))
    for name, entry in sorted(disk.tmp.items()):
        if entry.mtime >= grace_ts:
            continue
        if held_by_a_process(entry.path):
            plan.held.append(f"tmp/{name}: held by a live process")
            continue
        size = _measure(entry.path, entry)
        plan.tmp.append(Garbage("tmp", f"tmp/{name}", size, "a leftover no process holds"))
    live_exports, live_uploads = live_job_files()
    keep_exports = settings.LAYERHUB_GC_KEEP_EXPORTS
    for name, entry in sorted(disk.exports.items()):
        if name in live_exports:
            continue
        # a half-written archive is a killed export's; a whole one is kept for its period
        partial = name.startswith(".") and name.endswith(".partial")
        if partial and entry.mtime < grace_ts:
            why = "a half-written archive no export job holds"
        elif (
            not partial
            and keep_exports is not None
            and entry.mtime < (now - keep_exports).timestamp()
        ):
            why = f"saved for download more than {_period(keep_exports)} ago"
        else:
            continue
        plan.exports.append(Garbage("export", str(entry.path), _measure(entry.path, entry), why))
    for name, entry in sorted(disk.uploads.items()):
        if name not in live_uploads and entry.mtime < grace_ts:
            why = "an upload no import job holds"
            plan.uploads.append(
                Garbage("upload", str(entry.path), _measure(entry.path, entry), why)
            )
    plan.jobs = _jobs_to_delete(now)


def grace_cutoff(now: datetime) -> float:
    """What was modified before this (a time.time() value) is past LAYERHUB_GC_GRACE."""
    grace: timedelta | None = settings.LAYERHUB_GC_GRACE
    return (now - (grace or timedelta(0))).timestamp()


def live_job_files() -> tuple[set[str], set[str]]:
    """Names in the export and upload folders that queued or running jobs will write or read."""
    exports: set[str] = set()
    uploads: set[str] = set()
    live = Job.objects.filter(
        state__in=LIVE_STATES, kind__in=(Job.Kind.EXPORT, Job.Kind.IMPORT)
    ).values_list("pk", "kind", "params")
    for pk, kind, params in live:
        path = params.get("path") if isinstance(params, dict) else None
        if not isinstance(path, str) or not path:
            continue
        name = Path(path).name
        if kind == Job.Kind.EXPORT:
            exports.update({name, f".{name}.{pk}.partial"})
        else:
            uploads.add(name)
    return exports, uploads


def _old_jobs(cutoff: datetime) -> Q:
    return Q(state__in=Job.ENDED) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    )


def jobs_query(now: datetime) -> QuerySet[Job]:
    """Ended jobs past LAYERHUB_GC_KEEP_JOBS whose every child is too."""
    keep = settings.LAYERHUB_GC_KEEP_JOBS
    if keep is None:
        return Job.objects.none()
    old = _old_jobs(now - keep)
    # deleting a job deletes the jobs it started: one whose child is not old yet waits
    young_child = Job.objects.filter(parent=OuterRef("pk")).exclude(old)
    return Job.objects.filter(old).filter(~Exists(young_child)).order_by("pk")


def _jobs_to_delete(now: datetime) -> list[Garbage]:
    return [
        Garbage(
            "job",
            str(pk),
            0,
            f"{kind} {reference or ''}".strip()
            + f", {state} {(finished or created):%Y-%m-%d %H:%M}",
        )
        for pk, kind, reference, state, finished, created in jobs_query(now).values_list(
            "pk", "kind", "reference", "state", "finished_at", "created_at"
        )
    ]


def _period(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"
