"""Starting jobs and recording their progress."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from celery import current_app
from django.db import transaction

from layerhub.engine.errors import LayerhubError
from layerhub.jobs.models import Job

# the Celery task that runs each kind of job (workers/tasks.py registers them by these names)
TASK_FOR_KIND = {
    Job.Kind.PULL: "layerhub.image_pull",
    Job.Kind.UNPACK: "layerhub.image_unpack",
    Job.Kind.IMPORT: "layerhub.image_import",
    Job.Kind.COMMIT: "layerhub.container_commit",
    Job.Kind.PUSH: "layerhub.image_push",
    Job.Kind.EXPORT: "layerhub.image_save",
}


def acting_user(user: Any) -> Any:
    """The user to record as having asked, or None for an anonymous request or the CLI."""
    return user if user is not None and user.is_authenticated else None


def job_start(*, kind: str, user: Any = None, **fields: Any) -> Job:
    """Create a queued job and send it to a worker once the transaction commits."""
    with transaction.atomic():
        job = Job.objects.create(kind=kind, created_by=acting_user(user), **fields)
        job_enqueue(job=job)
    return job


def job_enqueue(*, job: Job) -> None:
    """Send the job to a worker once the transaction that created it has committed."""
    task = current_app.tasks[TASK_FOR_KIND[Job.Kind(job.kind)]]
    pk = job.pk
    transaction.on_commit(lambda: task.apply_async(args=[pk]))


def job_run(job: Job, work: Callable[[], None]) -> None:
    """Run ``work`` for a claimed job and record how it ended: an error a user caused becomes
    the job's message; anything else is recorded and re-raised (a bug, for the worker's log)."""
    try:
        work()
    except LayerhubError as exc:
        job.finish(error=str(exc))
    except Exception as exc:
        job.finish(error=f"internal error: {type(exc).__name__}: {exc}")
        raise
    else:
        job.finish()


class JobProgress:
    """Per-layer progress kept in memory (any thread may report) and saved on the job row at
    most every ``interval`` seconds (from the thread that calls ``flush``)."""

    def __init__(self, job: Job, interval: float = 0.5) -> None:
        self.job = job
        self.interval = interval
        self._lines: dict[str, dict[str, Any]] = {
            line["digest"]: dict(line) for line in job.progress or []
        }
        self._lock = threading.Lock()
        self._dirty = False
        self._saved_at = 0.0

    def update(self, digest: str, status: str, current: int, total: int) -> None:
        """Record one layer's status and bytes done."""
        with self._lock:
            self._lines[digest] = {
                "digest": digest,
                "status": status,
                "current": current,
                "total": total,
            }
            self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Save to the job row if something changed and the interval has passed."""
        now = time.monotonic()
        with self._lock:
            if not self._dirty or (not force and now - self._saved_at < self.interval):
                return
            lines = [dict(line) for line in self._lines.values()]
            self._dirty = False
            self._saved_at = now
        self.job.save_progress(lines)

    def reporter(self) -> Callable[[str, str, int, int], None]:
        """``update`` as an engine progress callback."""
        return self.update
