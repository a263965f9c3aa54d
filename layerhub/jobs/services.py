"""Starting jobs and recording their progress."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import kombu.exceptions
import redis
from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from kombu.utils.url import maybe_sanitize_url

from layerhub.engine.cancel import Cancelled
from layerhub.engine.errors import Conflict, LayerhubError
from layerhub.hosts.routing import host_queue
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
    Job.Kind.GC: "layerhub.store_gc",
    Job.Kind.DEDUP: "layerhub.store_dedup",
    Job.Kind.INDEX: "layerhub.index_files",
}


class JobCancelled(Cancelled):
    """Raised in a running job once someone has cancelled it: the run stops and the job
    ends ``cancelled`` (not an error of anybody's input, nor a failure)."""


class CancelWatch:
    """Whether someone has asked a running job to stop.

    ``requested`` is an in-memory flag any thread may read at every chunk for free;
    ``poll`` refreshes it from the job row (at most once per ``interval`` unless forced) and is
    called from threads that may use the database: the heartbeat thread, the thread that
    saves progress, and the job's own thread between layers.
    """

    interval = 1.0

    def __init__(self, job: Job) -> None:
        self.job_pk = job.pk
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._polled_at = float("-inf")
        if job.cancel_requested_at is not None:
            self._event.set()

    def requested(self) -> bool:
        """Whether a cancel has been seen (no database query)."""
        return self._event.is_set()

    def poll(self, *, force: bool = False) -> bool:
        """Look at the job row (unless looked at within ``interval``); say whether to stop."""
        if self._event.is_set():
            return True
        now = time.monotonic()
        with self._lock:
            if not force and now - self._polled_at < self.interval:
                return False
            self._polled_at = now
        asked = Job.objects.filter(pk=self.job_pk, cancel_requested_at__isnull=False).exists()
        if asked:
            self._event.set()
        return asked

    def check(self, *, force: bool = False) -> None:
        """Raise JobCancelled if a cancel has been asked (a stop point of the job's thread)."""
        if self.poll(force=force):
            raise JobCancelled(f"job {self.job_pk} was cancelled")

    def should_stop(self) -> bool:
        """The engine's stop check for the job's own thread (between layers): always fresh."""
        return self.poll(force=True)


def cancel_watch(job: Job) -> CancelWatch:
    """The one watch of this run of ``job`` (its services, progress and heartbeat share it)."""
    watch = job.__dict__.get("_cancel_watch")
    if watch is None:
        watch = job.__dict__["_cancel_watch"] = CancelWatch(job)
    return cast(CancelWatch, watch)


def job_cancel(*, job: Job, user: Any = None) -> Job:
    """Cancel a queued or running job and the jobs it started.

    A queued job is cancelled at once (its task, when it comes, finds nothing to claim). A
    running job is asked to stop: its run notices at its next chunk (pull, push, import,
    export) or layer (unpack, commit), discards what it had in tmp/ and ends ``cancelled``.
    Either way its leases stop holding anything once it has ended. Raises Conflict for a job
    that has already ended.
    """
    now = timezone.now()
    with transaction.atomic():
        queued = Job.objects.filter(pk=job.pk, state=Job.State.QUEUED).update(
            state=Job.State.CANCELLED, cancel_requested_at=now, finished_at=now, error=""
        )
        running = 0
        if not queued:
            running = Job.objects.filter(
                pk=job.pk, state=Job.State.RUNNING, cancel_requested_at=None
            ).update(cancel_requested_at=now)
        job.refresh_from_db()
        if not queued and not running and job.state != Job.State.RUNNING:
            raise Conflict(f"job {job.pk} has already ended ({job.state}): nothing to cancel")
        for child in job.children.filter(state__in=(Job.State.QUEUED, Job.State.RUNNING)):
            job_cancel(job=child, user=user)
    if queued:
        logger.info("job %s (%s) cancelled while queued", job.pk, job.kind)
        job_discard_upload(job=job)
    else:
        logger.info("job %s (%s) asked to stop", job.pk, job.kind)
    return job


def job_discard_upload(*, job: Job) -> None:
    """Delete the uploaded archive an import job was given, once the job has ended: the
    upload exists only to be imported (``params["upload"]`` marks it as the job's own)."""
    if not job.params.get("upload"):
        return
    path = job.params.get("path")
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("job %s: could not remove the upload %s", job.pk, path, exc_info=True)


def export_dir() -> Path:
    """LAYERHUB_EXPORT_DIR, made if need be: where archives saved for download from the
    browser are written (outside the store: an archive is no store content); ``jobs:download``
    serves only files in it."""
    root = Path(settings.LAYERHUB_EXPORT_DIR)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def export_path() -> str:
    """A new file name in ``export_dir()`` for an archive saved to be downloaded: pass it to
    ``image_save(path=...)``; ``jobs:download`` serves it once the export job has succeeded."""
    return str(export_dir() / f"{uuid.uuid4().hex}.tar")


def acting_user(user: Any) -> Any:
    """The user to record as having asked, or None for an anonymous request or the CLI."""
    return user if user is not None and user.is_authenticated else None


def job_start(*, kind: str, user: Any = None, team: Any = None, **fields: Any) -> Job:
    """Create a queued job (acting for ``team``, if any) and send it to a worker once the
    transaction commits."""
    with transaction.atomic():
        job = Job.objects.create(kind=kind, created_by=acting_user(user), team=team, **fields)
        job_enqueue(job=job)
    return job


def job_enqueue(*, job: Job) -> None:
    """Send the job to a worker once the transaction that created it has committed: to the
    deployment's queue, or to its host's queue when ``job.host`` names one.

    When Redis does not answer the job is failed with a message saying so, and
    BrokerUnavailable is raised (to whoever commits), so nothing waits on a job that no
    worker will ever be told about.
    """
    name = TASK_FOR_KIND[Job.Kind(job.kind)]
    pk = job.pk
    # a job that needs one host's disk goes to that host's queue (layerhub.hosts.routing)
    queue = host_queue(job.host) if job.host else settings.LAYERHUB_QUEUE

    def send() -> None:
        if current_app.conf.task_always_eager:
            # runs here: its errors are its own, not the broker's
            if name not in current_app.tasks:
                current_app.loader.import_default_modules()  # the app's `include`: the tasks
            current_app.tasks[name].apply_async(args=(pk,))
            return
        try:
            current_app.send_task(name, args=(pk,), queue=queue)
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
        self.watch = cancel_watch(job)
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
        # wakes at least once a second to notice a cancel; stamps every ``interval``
        tick = min(self.interval, CancelWatch.interval)
        stamped = time.monotonic()
        try:
            while not self._stop.wait(tick):
                try:
                    self.watch.poll()
                    if time.monotonic() - stamped < self.interval:
                        continue
                    stamped = time.monotonic()
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
    watch = cancel_watch(job)
    try:
        with beating:
            watch.check(force=True)  # cancelled between its claim and here
            work()
    except Exception as exc:
        # a cancelled run stops wherever it was: whatever it raised on the way out (the
        # JobCancelled itself, or a knock-on error of a thread it stopped) is the cancel
        if isinstance(exc, Cancelled) or watch.poll(force=True):
            logger.info(
                "job %s (%s) stopped: cancelled",
                job.pk,
                job.kind,
                exc_info=None if isinstance(exc, Cancelled) else exc,
            )
            _record_end(job, "", cancelled=True)
            return
        _record_failure(job, exc)
    else:
        _record_end(job, "")


def _record_failure(job: Job, exc: Exception) -> None:
    if isinstance(exc, LayerhubError):
        _record_end(job, one_line(str(exc)))
    else:
        logger.error(
            "job %s (%s %s) failed with an internal error", job.pk, job.kind, job, exc_info=exc
        )
        _record_end(
            job,
            one_line(
                f"internal error (not caused by your input): {type(exc).__name__}: {exc}; "
                "the worker's log has the details"
            ),
        )
        raise exc


def _record_end(job: Job, error: str, *, cancelled: bool = False) -> None:
    # A run taken for dead (its heartbeat stalled past LAYERHUB_JOB_DEAD_AFTER) whose job was
    # queued again and claimed by another run must not write over that run's outcome.
    if job.runner and not Job.objects.filter(pk=job.pk, runner=job.runner).exists():
        logger.warning(
            "job %s was taken over by another run; this run's end is not recorded", job.pk
        )
        return
    if cancelled:
        job.finish_cancelled()
    else:
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
        self.watch = cancel_watch(job)

    def update(self, digest: str, status: str, current: int, total: int) -> None:
        """Record one layer's status and bytes done."""
        with self._lock:
            line = {"digest": digest, "status": status, "current": current, "total": total}
            before = self._lines.get(digest, {})
            host = before.get("host")
            if host:
                line["host"] = host
            # a layer downloaded and unpacked in one pass ends "Pull complete": remember it
            # was downloaded, for the "Download complete" line docker prints before that
            if before.get("downloaded") or status in ("Downloading", "Download complete"):
                line["downloaded"] = True
            self._lines[digest] = line
            self._dirty = True

    def served_by(self, digest: str, host: str) -> None:
        """Record which host a layer is being downloaded from (a mirror, or the registry
        itself after a mirror failed)."""
        with self._lock:
            line = self._lines.setdefault(
                digest, {"digest": digest, "status": "Waiting", "current": 0, "total": 0}
            )
            if line.get("host") != host:
                line["host"] = host
                self._dirty = True

    def flush(self, force: bool = False) -> None:
        """Save to the job row if something changed and the interval has passed (and look
        whether the job was cancelled: the thread that saves progress may use the database,
        the download threads that report it do not)."""
        self.watch.poll()
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
