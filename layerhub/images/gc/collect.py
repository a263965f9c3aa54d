"""Running a garbage collection: rows under the lease barrier, then files, each re-checked
under its own lock (see ``layerhub.images.gc``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from django.db import transaction
from django.db.models import ProtectedError
from django.utils import timezone

from layerhub.containers.models import Container
from layerhub.core.store import get_store
from layerhub.engine import fsutil
from layerhub.engine.container import container_lock
from layerhub.engine.errors import BlobStoreUnavailable, Conflict
from layerhub.images.gc.plan import (
    Plan,
    grace_cutoff,
    jobs_query,
    live_job_files,
    make_plan,
    measure,
    on_disk,
    plan_folders,
)
from layerhub.images.gc.report import GCReport
from layerhub.images.leases import lease_barrier
from layerhub.images.models import Layer
from layerhub.images.removal import images_delete_rows, plan_files_delete
from layerhub.jobs.models import Job

logger = logging.getLogger(__name__)
JOB_DELETE_BATCH = 500


def store_gc(
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GCReport:
    """Collect garbage (see the module docstring); with ``dry_run``, only say what would go.

    ``should_stop`` is asked between items: True stops the collection there (the report then
    says ``stopped``); what was deleted by then is deleted whole, the rest stays for the next.
    """
    now = now or timezone.now()
    asked = should_stop or (lambda: False)

    def stop() -> None:
        if asked():
            raise _Stopped

    disk = on_disk()
    if dry_run:
        plan = make_plan(disk, now)
    else:
        with transaction.atomic():
            # the marks and the row deletes see every lease written before, and none after
            lease_barrier(exclusive=True)
            plan = make_plan(disk, now)
            try:
                images_delete_rows(images=plan.images, plan=plan.image_plan)
            except ProtectedError:
                raise Conflict(
                    "a container was created on an untagged image while garbage was being "
                    "collected: nothing was deleted; collect again"
                ) from None
            for chain_id in plan.layer_rows:  # top first: a layer goes once nothing stands on it
                Layer.objects.filter(chain_id=chain_id).delete()
    # walks of trees and folders, outside the transaction (SQLite's writers wait on it)
    measure(plan)
    plan_folders(plan, disk, now)
    left = [*disk.left, *plan.left]
    if dry_run:
        return GCReport(dry_run=True, items=plan.items(), held=plan.held, left=left)
    report = GCReport(dry_run=False, items=plan.image_items(), held=list(plan.held), left=left)
    try:
        _delete_store_files(plan, report, stop)
        _abort_multipart(plan, report, stop)
        _delete_folder_items(plan, report, now, stop)
        _delete_jobs(plan, report, now)
    except _Stopped:
        report.stopped = True
    logger.info("garbage collection: %s", report.summary())
    return report


class _Stopped(Exception):
    """The collection was asked to stop (between two items)."""


def _delete_store_files(plan: Plan, report: GCReport, stop: Callable[[], None]) -> None:
    """The trees and files of the rows deleted (and of those no row named), each only if
    nothing holds it when its turn comes."""
    for item in plan.snapshots:
        stop()
        removed = plan_files_delete(blobs=[], snapshots=[(item.key, item.size)])
        # a layer row that had no tree went with the rows
        if removed.snapshots or item.key in plan.absent:
            report.items.append(item)
        report.held.extend(f"snapshot {key}: in use again" for key in removed.kept)
    for item in plan.blobs:
        stop()
        removed = plan_files_delete(blobs=[(item.key, item.size)], snapshots=[])
        if removed.blobs:
            report.items.append(item)
        report.held.extend(f"blob {key}: in use again" for key in removed.kept)


def _abort_multipart(plan: Plan, report: GCReport, stop: Callable[[], None]) -> None:
    """Abort the object store's stale multipart uploads (one gone meanwhile, completed or
    aborted elsewhere, is not reported)."""
    blobs = get_store().blobs
    for item in plan.multipart:
        stop()
        try:
            if blobs.abort_upload(plan.aborts[item.key]):
                report.items.append(item)
        except BlobStoreUnavailable as exc:
            report.left.append(f"{item.key}: {exc}")
            logger.warning("garbage collection left %s: %s", item.key, exc)


def _delete_folder_items(
    plan: Plan, report: GCReport, now: datetime, stop: Callable[[], None]
) -> None:
    """Container layers, tmp/ entries, archives and uploads, each judged again first."""
    store = get_store()
    grace_ts = grace_cutoff(now)
    for item in plan.containers:
        stop()
        if _container_layer_remove(item.key, grace_ts, report):
            report.items.append(item)
    sweep = fsutil.SweepReport()
    for item in plan.tmp:
        stop()
        entry = store.tmp / item.key.removeprefix("tmp/")
        if fsutil.sweep_entry(entry, sweep, modified_before=grace_ts):
            report.items.append(item)
    report.left.extend(sweep.left)
    live_exports, live_uploads = live_job_files()
    for item in plan.exports:
        stop()
        if Path(item.key).name not in live_exports and _remove(Path(item.key), report):
            report.items.append(item)
    for item in plan.uploads:
        stop()
        if Path(item.key).name not in live_uploads and _remove(Path(item.key), report):
            report.items.append(item)


def _remove(path: Path, report: GCReport) -> bool:
    """Remove a file (a link itself, a tree without entering a mount); whether it went."""
    if not os.path.lexists(path):
        return False
    try:
        fsutil.remove_path(path)
    except OSError as exc:
        report.left.append(f"{path}: {exc}")
        logger.warning("garbage collection left %s: %s", path, exc)
        return False
    return True


def _container_layer_remove(container_id: str, grace_ts: float, report: GCReport) -> bool:
    """Remove ``containers/<id>/`` if still no container row names it, under the container's
    lock (held by anything changing a container): renamed into tmp/ first, so nobody sees it
    half removed, and a crash leaves it to the next sweep of tmp/."""
    store = get_store()
    root = store.containers / container_id
    try:
        with container_lock(store.locks, container_id, wait=0.0):
            if Container.objects.filter(container_id=container_id).exists():
                return False
            try:
                if os.lstat(root).st_mtime >= grace_ts:
                    return False
            except FileNotFoundError:
                return False
            doomed = fsutil.TempEntry(store.tmp, "gc-", directory=True)
            try:
                os.rename(root, doomed.path / "container")
            except OSError as exc:
                doomed.close(remove=True)
                report.left.append(f"containers/{container_id}: {exc}")
                return False
            try:
                doomed.close(remove=True)
            except OSError as exc:
                # a mount inside: left in tmp/, whose sweep unmounts it first
                report.left.append(f"containers/{container_id}: {exc}")
                logger.warning("garbage collection left container %s: %s", container_id, exc)
                return False
    except Conflict:  # busy: something is using it after all
        return False
    return True


def _delete_jobs(plan: Plan, report: GCReport, now: datetime) -> None:
    """Delete the planned job rows still past their period (their leases with them)."""
    if not plan.jobs:
        return
    query = jobs_query(now)
    planned = [int(item.key) for item in plan.jobs]
    for start in range(0, len(planned), JOB_DELETE_BATCH):
        batch = planned[start : start + JOB_DELETE_BATCH]
        with transaction.atomic():
            Job.objects.filter(pk__in=query.filter(pk__in=batch).values("pk")).delete()
    # a job whose parent went before it went with it
    left = set(Job.objects.filter(pk__in=planned).values_list("pk", flat=True))
    report.items.extend(item for item in plan.jobs if int(item.key) not in left)
