"""Background jobs: what a pull, unpack, import (and later commit, push, export) is doing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class Job(models.Model):
    """One piece of background work, its state, its per-layer progress and its outcome.

    A Celery task claims a queued job with a conditional update (``claim``), so a job is run
    once however often its message is delivered; the state moves queued -> running ->
    succeeded | failed. Progress is stored here so pages and the API read it from the database.
    """

    class Kind(models.TextChoices):
        PULL = "pull", "pull"
        UNPACK = "unpack", "unpack"
        IMPORT = "import", "import"
        COMMIT = "commit", "commit"
        PUSH = "push", "push"
        EXPORT = "export", "export"

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

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
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "kind"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.reference or self.pk} ({self.state})"

    @property
    def done(self) -> bool:
        """Whether the job has ended, well or not."""
        return self.state in (self.State.SUCCEEDED, self.State.FAILED)

    def claim(self) -> bool:
        """Move queued -> running if nobody else has, and say whether this caller may run it.

        A job found running is one whose worker died mid-run and whose message was delivered
        again: it is claimed again, up to ``max_attempts`` runs, then failed for good.
        """
        now = timezone.now()
        claimed = (
            Job.objects.filter(pk=self.pk, state__in=[self.State.QUEUED, self.State.RUNNING])
            .exclude(state=self.State.RUNNING, attempts__gte=self.max_attempts())
            .update(state=self.State.RUNNING, started_at=now, attempts=models.F("attempts") + 1)
        )
        self.refresh_from_db()
        if not claimed and self.state == self.State.RUNNING:
            self.finish(
                error=f"the worker running this job stopped {self.attempts} times "
                "(killed or out of memory); giving up"
            )
        return bool(claimed)

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
