"""Starting jobs and recording their progress."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis
from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from kombu.utils.url import maybe_sanitize_url

from layerhub.engine.errors import LayerhubError
from layerhub.jobs.models import Job

logger = logging.getLogger(__name__)


class BrokerUnavailable(LayerhubError):
    """Redis (the broker that carries jobs to the workers) does not answer."""


def broker_down_message(exc: BaseException) -> str:
    """One line saying the broker is down, where it was looked for, and what to do."""
    where = maybe_sanitize_url(settings.REDIS_URL)
    reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    return (
        f"the broker (Redis at {where}) does not answer: {reason}. "
        "Start it (`make dev` starts one) or point REDIS_URL at it"
    )


def one_line(text: str) -> str:
    """A message on one line (tracebacks and multi-line errors are for logs, not people)."""
    return " ".join(text.split())


# the Celery task that runs each kind of job (workers/tasks.py registers them by these names)
TASK_FOR_KIND = {
    Job.Kind.PULL: "layerhub.image_pull",
    Job.Kind.UNPACK: "layerhub.image_unpack",
    Job.Kind.IMPORT: "layerhub.image_import",
    Job.Kind.COMMIT: "layerhub.container_commit",
    Job.Kind.PUSH: "layerhub.image_push",
    Job.Kind.EXPORT: "layerhub.image_save",
    Job.Kind.VERIFY: "layerhub.store_verify",
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
    """Send the job to a worker once the transaction that created it has committed.

    When Redis does not answer the job is failed with a message saying so, and
    BrokerUnavailable is raised (to whoever commits), so nothing waits on a job that no
    worker will ever be told about.
    """
    name = TASK_FOR_KIND[Job.Kind(job.kind)]
    pk = job.pk

    def send() -> None:
        if current_app.conf.task_always_eager:
            # runs here: its errors are its own, not the broker's
            if name not in current_app.tasks:
                current_app.loader.import_default_modules()  # the app's `include`: the tasks
            current_app.tasks[name].apply_async(args=(pk,))
            return
        try:
            current_app.send_task(name, args=(pk,), queue=settings.LAYERHUB_QUEUE)
        except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
            message = broker_down_message(exc)
            Job.objects.filter(pk=pk, state=Job.State.QUEUED).update(
                state=Job.State.FAILED,
                error=f"could not be queued: {message}",
                finished_at=timezone.now(),
            )
            raise BrokerUnavailable(message) from None

    transaction.on_commit(send)


class _Heartbeat:
    """A thread that stamps the job's row every LAYERHUB_JOB_HEARTBEAT seconds while it runs,
    so a job whose worker is killed is noticed (``Job.objects.reap_dead``) within
    LAYERHUB_JOB_DEAD_AFTER instead of never."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.interval = float(settings.LAYERHUB_JOB_HEARTBEAT)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"job-{job.pk}-heartbeat", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        # a beat stuck behind a database lock must not hold the job's end up for long
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    if not self.job.beat():
                        return  # ended, or re-queued as dead: this run's stamps mean nothing
                except DatabaseError:
                    logger.warning("job %s: heartbeat not recorded", self.job.pk, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connections


def job_run(job: Job, work: Callable[[], None]) -> None:
    """Run ``work`` for a claimed job, stamping its heartbeat meanwhile, and record how it
    ended: an error a user caused becomes the job's message; anything else is a bug or a
    fault of the host, logged with its traceback, recorded as an internal error and
    re-raised."""
    beating = contextlib.nullcontext() if current_app.conf.task_always_eager else _Heartbeat(job)
    try:
        with beating:
            work()
    except LayerhubError as exc:
        _record_end(job, one_line(str(exc)))
    except Exception as exc:
        logger.exception("job %s (%s %s) failed with an internal error", job.pk, job.kind, job)
        _record_end(
            job,
            one_line(
                f"internal error (not caused by your input): {type(exc).__name__}: {exc}; "
                "the worker's log has the details"
            ),
        )
        raise
    else:
        _record_end(job, "")


def _record_end(job: Job, error: str) -> None:
    # A run taken for dead (its heartbeat stalled past LAYERHUB_JOB_DEAD_AFTER) whose job was
    # queued again and claimed by another run must not write over that run's outcome.
    if job.runner and not Job.objects.filter(pk=job.pk, runner=job.runner).exists():
        logger.warning(
            "job %s was taken over by another run; this run's end is not recorded", job.pk
        )
        return
    job.finish(error=error)


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
