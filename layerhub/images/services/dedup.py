"""The dedup job: hardlink identical files across snapshots (``layerhub.engine.dedup``), as
OSTree and composefs store each file once, and record the links so sizes count them once.

Which files: regular files of indexed snapshots (``FileEntry`` kind ``f``, at least
LAYERHUB_DEDUP_MIN_SIZE bytes) whose sha256 a file of another snapshot has too; one path per
snapshot per content. The disk then decides: same bytes, same attributes, same file system.
Only trees under ``snapshots/``; never a container's writable layer.

One host's: the links are made in the snapshot directory of the host that runs the job
(``LAYERHUB_SNAPSHOTS``), while what they save is recorded once for the whole store
(DedupInode and DedupLink rows, which sizes read). So dedup runs only while a single host
holds snapshots, and on that host (its job goes to that host's queue); with snapshots on
several hosts it is refused, saying so, rather than recording one host's links as everyone's.

Safe against pulls, ``rmi`` and garbage collection running meanwhile: the job leases every
snapshot it may touch before it reads which layers exist (a delete leaves a leased snapshot;
a layer deleted before the lease is left out), and each link is made under a temporary name
and renamed over, so a reader sees the old file or the new one (same bytes) and never a
missing one. A dry run compares the same bytes and says what a run would free, exactly.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine.dedup import TEMP_PREFIX, Candidate, link_identical, remove_leftovers
from layerhub.engine.errors import LayerhubError
from layerhub.engine.file_index import FILE
from layerhub.hosts.models import current_host
from layerhub.images.dedup_links import dedup_links_record
from layerhub.images.leases import LIVE_STATES, job_lease
from layerhub.images.models import DedupLink, FileEntry, Layer, Snapshot
from layerhub.jobs.models import Job
from layerhub.jobs.services import cancel_watch, job_run, job_start

logger = logging.getLogger(__name__)
# skipped reasons kept in a report stored on a job row
MAX_STORED_SKIPS = 200
PROGRESS_EVERY = 1.0  # seconds between two progress saves


@dataclass
class DedupReport:
    """What a dedup (or its dry run) linked and freed."""

    dry_run: bool = False
    contents: int = 0  # contents held by more than one snapshot, looked at
    files_linked: int = 0  # paths replaced by a hardlink (or that would be)
    freed_bytes: int = 0  # what that freed (or would free), exactly
    skipped: list[str] = field(default_factory=list)
    skipped_count: int = 0
    stopped: bool = False
    leftovers: int = 0  # temporary links a killed run left, removed

    def summary(self) -> str:
        """One line for people."""
        verb = "would link" if self.dry_run else "linked"
        frees = "would free" if self.dry_run else "freed"
        line = (
            f"{verb} {self.files_linked} files of {self.contents} shared contents: "
            f"{frees} {human_size(self.freed_bytes)} ({self.freed_bytes} bytes)"
        )
        if self.skipped_count:
            line += f", {self.skipped_count} left alone"
        return line + (" (stopped)" if self.stopped else "")

    def to_json(self) -> dict[str, Any]:
        """A bounded form to keep on a job row."""
        data = asdict(self)
        data["skipped"] = data["skipped"][:MAX_STORED_SKIPS]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DedupReport:
        """The report ``to_json`` stored."""
        return cls(
            dry_run=bool(data.get("dry_run")),
            contents=int(data.get("contents", 0)),
            files_linked=int(data.get("files_linked", 0)),
            freed_bytes=int(data.get("freed_bytes", 0)),
            skipped=list(data.get("skipped", [])),
            skipped_count=int(data.get("skipped_count", 0)),
            stopped=bool(data.get("stopped")),
            leftovers=int(data.get("leftovers", 0)),
        )


@dataclass(frozen=True)
class _File:
    layer_id: int
    path: str
    size: int


def _candidates(min_size: int) -> dict[bytes, list[_File]]:
    """Each content more than one indexed, unpacked snapshot holds: one file per snapshot
    (the path dedup linked before, else the first indexed)."""
    shared = (
        FileEntry.objects.filter(kind=FILE, sha256__isnull=False)
        .values("sha256")
        .annotate(snapshots=Count("layer", distinct=True))
        .filter(snapshots__gt=1)
    )
    files = FileEntry.objects.filter(
        kind=FILE,
        sha256__in=shared.values("sha256"),
        size__gte=max(min_size, 1),
        layer__unpacked_at__isnull=False,
    )
    linked = set(DedupLink.objects.values_list("layer_id", "path"))
    groups: dict[bytes, dict[int, _File]] = defaultdict(dict)
    rows = files.order_by("sha256", "layer_id", "id").values_list(
        "sha256", "layer_id", "path", "size"
    )
    for sha, layer_id, path, size in rows.iterator(chunk_size=5000):
        held = groups[bytes(sha or b"")]
        current = held.get(layer_id)
        if current is None or (
            (layer_id, path) in linked and (layer_id, current.path) not in linked
        ):
            held[layer_id] = _File(layer_id, path, size)
    return {sha: list(held.values()) for sha, held in groups.items() if len(held) > 1}


def _remove_leftovers(groups: dict[bytes, list[_File]], live: dict[int, str]) -> int:
    """Remove, from the directories this run will link in, the temporary links a run killed
    between its link and its rename left (``layerhub.engine.dedup.remove_leftovers``)."""
    store = get_store()
    directories: dict[int, set[str]] = defaultdict(set)
    for files in groups.values():
        for f in files:
            if f.layer_id in live:
                directories[f.layer_id].add(f.path.rpartition("/")[0])
    indexed: dict[int, set[str]] = defaultdict(set)
    for layer_id, path in FileEntry.objects.filter(
        layer_id__in=list(directories), name__startswith=TEMP_PREFIX
    ).values_list("layer_id", "path"):
        indexed[layer_id].add(path)
    removed = 0
    for layer_id, folders in directories.items():
        tree = store.snapshots.path(live[layer_id])
        keep = frozenset(indexed[layer_id])
        for folder in sorted(folders):
            removed += remove_leftovers(tree, folder, indexed=keep)
    if removed:
        logger.warning("dedup removed %d temporary links a killed run left", removed)
    return removed


class DedupRefused(LayerhubError):
    """Dedup cannot run here: snapshots are held by several hosts, or by another one."""


def dedup_host() -> str | None:
    """The one host holding snapshots (None when none does), where dedup runs; DedupRefused
    when several hold them."""
    holders = sorted(set(Snapshot.objects.values_list("host", flat=True).distinct()))
    if len(holders) > 1:
        raise DedupRefused(
            f"dedup refused: {len(holders)} hosts hold snapshots ({', '.join(holders)}); "
            "dedup links files inside one host's snapshot directory and records what that "
            "saves for the whole store, so it runs only while a single host holds snapshots"
        )
    return holders[0] if holders else None


def store_dedup(
    *,
    dry_run: bool = False,
    job: Job | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> DedupReport:
    """Hardlink identical files across snapshots (see the module docstring); with ``dry_run``
    only say what would be linked and freed. ``job`` leases the snapshots touched (a run
    outside a job relies on nothing deleting meanwhile); ``should_stop`` is asked between
    contents; ``progress(done, total, freed)`` is told contents looked at so far."""
    asked = should_stop or (lambda: False)
    holder = dedup_host()
    if holder is not None and holder != current_host():
        raise DedupRefused(
            f"dedup refused: the snapshots are on host {holder}, and this is host "
            f"{current_host()}; dedup runs on the host that holds them"
        )
    report = DedupReport(dry_run=dry_run)
    groups = _candidates(int(settings.LAYERHUB_DEDUP_MIN_SIZE))
    layer_ids = {f.layer_id for files in groups.values() for f in files}
    chains = dict(Layer.objects.filter(pk__in=layer_ids).values_list("pk", "chain_id"))
    if job is not None:
        job_lease(job=job, keys=chains.values())
    # read after the lease: a layer deleted before it is left out, one deleted after stays
    live = dict(
        Layer.objects.filter(pk__in=layer_ids, unpacked_at__isnull=False).values_list(
            "pk", "chain_id"
        )
    )
    store = get_store()
    if not dry_run:
        report.leftovers = _remove_leftovers(groups, live)
    total = len(groups)
    for done, (sha, files) in enumerate(sorted(groups.items(), key=lambda g: -g[1][0].size)):
        if asked():
            report.stopped = True
            break
        if progress is not None:
            progress(done, total, report.freed_bytes)
        members = [f for f in files if f.layer_id in live]
        if len(members) < 2:
            continue
        report.contents += 1
        by_key = {live[f.layer_id]: f for f in members}
        result = link_identical(
            [Candidate(key, store.snapshots.path(key), f.path) for key, f in by_key.items()],
            dry_run=dry_run,
        )
        report.files_linked += result.files_linked
        report.freed_bytes += result.freed_bytes
        report.skipped_count += len(result.skipped)
        report.skipped.extend(result.skipped[: max(MAX_STORED_SKIPS - len(report.skipped), 0)])
        if not dry_run:
            for shared in result.linked:
                dedup_links_record(
                    members=[(by_key[c.key].layer_id, c.path) for c in shared],
                    size=members[0].size,
                    sha256=sha,
                )
    if progress is not None:
        progress(total, total, report.freed_bytes)
    logger.info("dedup: %s", report.summary())
    return report


def store_dedup_start(*, dry_run: bool = False, user: Any = None) -> Job:
    """Queue a dedup of the store's snapshots (a dry run says what it would free), on the
    host that holds them; DedupRefused when several hosts hold snapshots."""
    holder = dedup_host()
    return job_start(
        kind=Job.Kind.DEDUP,
        user=user,
        reference="dry run" if dry_run else "store",
        params={"dry_run": dry_run},
        host=holder or "",
    )


def store_dedup_running() -> Job | None:
    """A dedup job queued or running, if any (the sizes page shows its progress)."""
    return Job.objects.filter(kind=Job.Kind.DEDUP, state__in=LIVE_STATES).order_by("-pk").first()


def store_dedup_run(*, job_id: int) -> None:
    """The dedup job: link (or, for a dry run, compare) and keep the report in
    ``job.params["report"]``; its progress line says how far it is."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return
    watch = cancel_watch(job)
    last = [0.0]

    def progress(done: int, total: int, freed: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < PROGRESS_EVERY:
            return
        last[0] = now
        verb = "would free" if job.params.get("dry_run") else "freed"
        job.save_progress(
            [
                {
                    "digest": "dedup",
                    "status": f"Linking {done}/{total} shared contents, {verb} {human_size(freed)}",
                    "current": done,
                    "total": total,
                }
            ]
        )

    def work() -> None:
        report = store_dedup(
            dry_run=bool(job.params.get("dry_run")),
            job=job,
            should_stop=watch.poll,
            progress=progress,
        )
        with transaction.atomic():
            job.params = {**job.params, "report": report.to_json()}
            job.save(update_fields=["params"])
        if report.stopped:
            watch.check(force=True)  # ends the job cancelled, its report kept

    job_run(job, work)


def store_dedup_report(job: Job) -> DedupReport | None:
    """The report a dedup job stored (None until it has run)."""
    data = job.params.get("report") if isinstance(job.params, dict) else None
    return DedupReport.from_json(data) if isinstance(data, dict) else None
