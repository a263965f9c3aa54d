"""The garbage collection job: a collection (or its dry run) in a worker, its report kept on the
job row for the page to show; and the one Celery beat queues on a schedule."""

from __future__ import annotations

import logging
from typing import Any

from layerhub.hosts.models import Host
from layerhub.images.gc import GCReport, store_gc
from layerhub.images.leases import LIVE_STATES
from layerhub.images.removal import snapshots_collect_elsewhere
from layerhub.jobs.models import Job
from layerhub.jobs.services import cancel_watch, job_run, job_start

logger = logging.getLogger(__name__)


def store_gc_start(*, dry_run: bool = False, user: Any = None) -> Job:
    """Queue a garbage collection of the whole store (a dry run lists what would go)."""
    return job_start(
        kind=Job.Kind.GC,
        user=user,
        reference="dry run" if dry_run else "store",
        params={"dry_run": dry_run},
    )


def store_gc_scheduled() -> Job | None:
    """Queue a garbage collection unless one is queued or running already (what Celery beat
    asks for at every LAYERHUB_GC_EVERY); the job, or None when one was there."""
    if Job.objects.filter(kind=Job.Kind.GC, state__in=LIVE_STATES).exists():
        logger.info("a garbage collection is queued or running already: none queued")
        return None
    return store_gc_start()


def store_gc_run(*, job_id: int) -> None:
    """The gc job: collect (or list, for a dry run) and keep the report in
    ``job.params["report"]``. A cancel stops it between two items, each deleted whole."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return
    watch = cancel_watch(job)

    def work() -> None:
        dry_run = bool(job.params.get("dry_run"))
        report = store_gc(dry_run=dry_run, should_stop=watch.poll)
        job.params = {**job.params, "report": report.to_json()}
        job.save(update_fields=["params"])
        if not dry_run and not report.stopped:
            # this run swept this host's snapshots; every other host sweeps its own
            snapshots_collect_elsewhere(
                hosts=list(Host.objects.values_list("name", flat=True)), chain_ids=None
            )
        if report.stopped:
            watch.check(force=True)  # ends the job cancelled, its report kept

    job_run(job, work)


def store_gc_report(job: Job) -> GCReport | None:
    """The report a gc job stored (None until it has run)."""
    data = job.params.get("report") if isinstance(job.params, dict) else None
    return GCReport.from_json(data) if isinstance(data, dict) else None
