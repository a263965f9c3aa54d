"""Background jobs: what a pull, unpack, import, commit, push, export, verify or garbage
collection is doing."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

logger = logging.getLogger(__name__)


def _dead_before(now: datetime | None = None) -> datetime:
    """Heartbeats older than this mean the job's worker is gone."""
    return (now or timezone.now()) - timedelta(seconds=settings.LAYERHUB_JOB_DEAD_AFTER)


def runner_name() -> str:
    """Who runs a claimed job: host and process, made unique per claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobQuerySet(models.QuerySet["Job"]):
    """Queries over jobs, and the sweep that notices jobs whose worker is gone."""

    def dead(self, now: datetime | None = None) -> JobQuerySet:
        """Running jobs whose worker has not stamped the row for LAYERHUB_JOB_DEAD_AFTER."""
        return self.filter(state=Job.State.RUNNING, heartbeat_at__lt=_dead_before(now))

    def reap_dead(self, now: datetime | None = None) -> list[Job]:
        """Re-queue every running job whose worker is gone (killed, out of memory, machine
        down), or fail it once it has been started ``Job.max_attempts()`` times.

        Safe to call from anywhere and at any time (every worker calls it periodically, a
        CLI following a job calls it, pages may): each job moves with a conditional update,
        so two callers never both re-queue it, and a job whose worker is alive is never
        touched. Returns the jobs it moved, as they now are.
        """
        from layerhub.engine.errors import LayerhubError
        from layerhub.jobs.services import job_enqueue  # services import this module

        moved = []
        for job in self.dead(now):
            cutoff = _dead_before(now)
            still_dead = Job.objects.filter(
                pk=job.pk, state=Job.State.RUNNING, heartbeat_at__lt=cutoff
            )
            if job.cancel_requested_at is not None:
                # asked to stop, and its worker is gone: nothing is left to stop
                changed = still_dead.update(state=Job.State.CANCELLED, finished_at=timezone.now())
            elif job.attempts >= Job.max_attempts():
                error = (
                    f"the worker running this job stopped {job.attempts} times "
                    "(killed or out of memory); giving up"
                )
                changed = still_dead.update(
                    state=Job.State.FAILED, error=error, finished_at=timezone.now()
                )
            else:
                changed = still_dead.update(state=Job.State.QUEUED, runner="")
            if not changed:
                continue
            job.refresh_from_db()
            logger.warning(
                "job %s (%s) lost its worker %s: %s",
                job.pk,
                job.kind,
                job.runner or "?",
                "re-queued" if job.state == Job.State.QUEUED else job.state,
            )
            moved.append(job)
            if job.state == Job.State.QUEUED:
                try:
                    job_enqueue(job=job)
                except LayerhubError as exc:  # the broker is down: the job failed, saying so
                    logger.warning("job %s could not be queued again: %s", job.pk, exc)
                    job.refresh_from_db()
        return moved


class Job(models.Model):
    """One piece of background work, its state, its per-layer progress and its outcome.

    A Celery task claims a queued job with a conditional update (``claim``), so a job is run
    once however often its message is delivered; the state moves queued -> running ->
    succeeded | failed | cancelled. Progress is stored here so pages and the API read it
    from the database.
    """

    class Kind(models.TextChoices):
        PULL = "pull", "pull"
        UNPACK = "unpack", "unpack"
        IMPORT = "import", "import"
        COMMIT = "commit", "commit"
        PUSH = "push", "push"
        EXPORT = "export", "export"
        VERIFY = "verify", "verify"
        GC = "gc", "gc"
        DEDUP = "dedup", "dedup"
        INDEX = "index", "index"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    # what the job was asked: a reference, a platform, a file path
    reference = models.CharField(max_length=512, blank=True)
    params = models.JSONField(default=dict, blank=True)
    # one entry per layer in manifest order (a list: jsonb would not keep an object's order):
    # {"digest": ..., "status": "Downloading", "current": n, "total": m}
    progress = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    image = models.ForeignKey(
        "images.Image", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # the team it acts for (its registry login, its repositories); none for store-wide work
    team = models.ForeignKey(
        "accounts.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    # the host whose disk the job needs (a container's commit runs on the container's host),
    # sent to that host's queue; empty: any worker
    host = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # stamped by the worker running the job every LAYERHUB_JOB_HEARTBEAT seconds
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # host:pid:nonce of the run that claimed the job last; its heartbeats carry it
    runner = models.CharField(max_length=200, blank=True)
    # set when someone asks a running job to stop; its run notices at its next chunk or layer
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    ENDED = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.reference or self.pk} ({self.state})"

    @property
    def done(self) -> bool:
        """Whether the job has ended, well or not."""
        return self.state in self.ENDED

    @property
    def live(self) -> bool:
        """Whether the job is queued or running (what a cancel applies to)."""
        return self.state in (self.State.QUEUED, self.State.RUNNING)

    def claim(self) -> bool:
        """Move queued -> running if nobody else has, and say whether this caller may run it.

        A job found running is run again only when its heartbeat has stopped (its worker
        died mid-run and the message was delivered again), up to ``max_attempts`` runs,
        then failed for good. One whose heartbeat is fresh is being run by a live worker:
        this delivery is a duplicate (Redis' visibility timeout, a re-queue that raced the
        original) and is dropped.
        """
        now = timezone.now()
        runner = runner_name()
        claimable = models.Q(state=self.State.QUEUED) | (
            models.Q(state=self.State.RUNNING)
            & (models.Q(heartbeat_at__lt=_dead_before(now)) | models.Q(heartbeat_at=None))
            & models.Q(attempts__lt=self.max_attempts())
            # a job asked to stop is not started again after its worker died
            & models.Q(cancel_requested_at=None)
        )
        claimed = Job.objects.filter(claimable, pk=self.pk).update(
            state=self.State.RUNNING,
            started_at=now,
            heartbeat_at=now,
            runner=runner,
            attempts=models.F("attempts") + 1,
        )
        self.refresh_from_db()
        if claimed:
            return True
        if self.state != self.State.RUNNING:
            return False
        if self.heartbeat_at is not None and self.heartbeat_at >= _dead_before(now):
            logger.info("job %s is running at %s; dropping a second delivery", self.pk, self.runner)
            return False
        if self.cancel_requested_at is not None:
            # its worker died while it was being cancelled: nothing is left to stop
            Job.objects.filter(pk=self.pk, state=self.State.RUNNING).update(
                state=self.State.CANCELLED, finished_at=now
            )
            self.refresh_from_db()
            return False
        self.finish(
            error=f"the worker running this job stopped {self.attempts} times "
            "(killed or out of memory); giving up"
        )
        return False

    def beat(self) -> bool:
        """Stamp the heartbeat of the run that claimed this job; False once it is no longer
        that run's (ended, or re-queued because it looked dead)."""
        return bool(
            Job.objects.filter(pk=self.pk, state=self.State.RUNNING, runner=self.runner).update(
                heartbeat_at=timezone.now()
            )
        )

    @staticmethod
    def max_attempts() -> int:
        """How many times a job interrupted mid-run (a killed worker) is started again."""
        return 3

    def finish(self, error: str = "") -> None:
        """Record the end: succeeded, or failed with a message for people."""
        self.state = self.State.FAILED if error else self.State.SUCCEEDED
        self.error = error
        self.finished_at = timezone.now()
        self.save(update_fields=["state", "error", "finished_at"])

    def finish_cancelled(self) -> None:
        """Record that the run stopped because someone cancelled the job."""
        self.state = self.State.CANCELLED
        self.error = ""
        self.finished_at = timezone.now()
        self.save(update_fields=["state", "error", "finished_at"])

    def save_progress(self, lines: list[dict[str, Any]]) -> None:
        """Store the per-layer progress lines (one UPDATE of this row alone)."""
        self.progress = lines
        Job.objects.filter(pk=self.pk).update(progress=lines)


class Lease(models.Model):
    """What a job will reference: a blob digest or a snapshot's ChainID, written (committed)
    before the job judges the blob or snapshot "already there".

    A lease is live while its job has not ended; deletes (``rmi``, garbage collection) leave
    what a live lease holds. A job that dies is failed in time, and its leases die with it.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="leases")
    key = models.CharField(max_length=128, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "key"], name="lease_job_key")]

    def __str__(self) -> str:
        return f"{self.key} for job {self.job_id}"
