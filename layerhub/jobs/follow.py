"""Following a job from the command line, printing progress the way ``docker pull`` does.

Following starts at once (a warm pull is over before any question to Redis is worth asking);
from the second second on, a watchdog checks that somebody will run the job: a queued job
with no live worker on this deployment's queue is reported, and after LAYERHUB_JOB_DEAD_AFTER
the command stops saying so (the job stays queued); a running job whose heartbeat stopped is
re-queued (``Job.objects.reap_dead``) and the command goes on following it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import current_app
from django.conf import settings
from django.core.management.base import CommandError

from layerhub.core.humanize import human_size
from layerhub.hosts.routing import host_queue
from layerhub.jobs.models import Job
from layerhub.jobs.presence import queues_served, workers_present
from layerhub.jobs.services import broker_down_message, one_line


def worker_answers() -> bool:
    """Whether a live worker takes jobs from this deployment's queue (its presence record,
    one Redis read: no broadcast ping that waits out a timeout)."""
    if current_app.conf.task_always_eager:
        return True
    try:
        return bool(workers_present(settings.LAYERHUB_QUEUE))
    except redis.RedisError:
        return False


class Out(Protocol):
    """Where progress goes: a text stream, or a management command's OutputWrapper."""

    def write(self, text: str, /) -> Any: ...

    def flush(self) -> None: ...

    def isatty(self) -> bool: ...


def progress_line(entry: dict[str, object]) -> str:
    """A layer's progress as ``docker pull`` prints it (``3f4e1a2b9c0d: Downloading 1MB/4MB``),
    and the host it came from when mirrors are in use (``... (from mirror.local)``)."""
    digest = str(entry["digest"]).split(":")[-1][:12]
    status = str(entry["status"])
    current, total = entry.get("current"), entry.get("total")
    host = entry.get("host")
    where = f" (from {host})" if isinstance(host, str) and host else ""
    if status in ("Downloading", "Extracting") and isinstance(current, int) and current:
        whole = total if isinstance(total, int) else 0
        return f"{digest}: {status} {human_size(current)}/{human_size(whole)}{where}"
    return f"{digest}: {status}{where}"


class Watchdog:
    """Notices, while a command follows a job, that nobody runs it, and says so."""

    def __init__(
        self, stderr: Out, *, what: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stderr = stderr
        self.what = what
        self.clock = clock
        self.started = clock()
        self.checked_at = self.started
        self.unserved_since: float | None = None
        self.warned = False

    def _say(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def check(self, job: Job) -> None:
        """Look at ``job`` (at most once a second, from the first second on); raises
        CommandError when no worker has taken a queued job for LAYERHUB_JOB_DEAD_AFTER."""
        now = self.clock()
        if current_app.conf.task_always_eager or now - self.checked_at < 1.0:
            return
        self.checked_at = now
        if job.state == Job.State.RUNNING:
            self._check_running(job)
        elif job.state == Job.State.QUEUED:
            self._check_queued(job, now)

    def _check_running(self, job: Job) -> None:
        if Job.objects.filter(pk=job.pk).dead().exists():
            for moved in Job.objects.filter(pk=job.pk).reap_dead():
                if moved.state == Job.State.QUEUED:
                    self._say(
                        f"the worker running this {self.what} stopped; it is queued again "
                        f"(run {moved.attempts + 1} of {Job.max_attempts()})"
                    )
            job.refresh_from_db()

    def _check_queued(self, job: Job, now: float) -> None:
        # a job for one host waits for that host's worker
        queue = host_queue(job.host) if job.host else settings.LAYERHUB_QUEUE
        try:
            present = workers_present(queue)
        except redis.RedisError as exc:
            present = []
            if not self.warned:
                self._say(one_line(broker_down_message(exc)))
                self.warned = True
        if present:
            self.unserved_since = None
            return
        if self.unserved_since is None:
            self.unserved_since = now
        if not self.warned:
            self._say(self._no_worker_text(queue) if not job.host else self._no_host_text(job))
            self.warned = True
        waited = now - self.unserved_since
        if waited >= settings.LAYERHUB_JOB_DEAD_AFTER and job.host:
            raise CommandError(
                f"no worker of host {job.host} took {self.what} job {job.pk} in {waited:.0f}s. "
                f"The job stays queued and runs when that host's worker starts (or fails "
                f"once the host has been gone for {settings.LAYERHUB_HOST_GONE_AFTER:g}s)"
            )
        if waited >= settings.LAYERHUB_JOB_DEAD_AFTER:
            raise CommandError(
                f"no worker took {self.what} job {job.pk} in {waited:.0f}s: none takes jobs "
                f"from queue {queue}. The job stays queued and runs when one starts "
                f"(`make dev`, or `celery -A workers worker -Q {queue}`)"
            )

    def _no_host_text(self, job: Job) -> str:
        return (
            f"no worker of host {job.host} is running: the {self.what} waits for it (it needs "
            f"that host's disk; start `celery -A workers worker -Q {settings.LAYERHUB_QUEUE}` "
            f"there with LAYERHUB_HOST={job.host})"
        )

    def _no_worker_text(self, queue: str) -> str:
        text = (
            f"no worker takes jobs from queue {queue}: the {self.what} waits until one starts "
            f"(`make dev` starts one, or `celery -A workers worker -Q {queue}`)"
        )
        try:
            others = [q for q in queues_served() if q != queue]
        except redis.RedisError:
            others = []
        if others:
            text += (
                f". Workers on this Redis take jobs from {', '.join(others)}: another "
                "deployment, or this one with another DATABASE_URL/LAYERHUB_STORE spelling "
                "(set LAYERHUB_QUEUE to share one)"
            )
        return text


def follow(
    job: Job,
    out: Out,
    *,
    poll: float = 0.1,
    tty: bool = False,
    watchdog: Watchdog | None = None,
) -> Job:
    """Print each layer's status as it changes until the job and the jobs it started end.

    Returns the last job of the chain (a pull's unpack job, say) as it ended. The row is read
    often at first (a warm pull's jobs end within a tenth of a second) and then every
    ``poll`` seconds.
    """
    shown: dict[str, str] = {}
    current = job
    delay = min(0.02, poll)
    while True:
        current.refresh_from_db()
        for entry in current.progress or []:
            text = progress_line(entry)
            key = f"{entry['digest']}"
            status_changed = shown.get(key, "").split(" ")[:2] != text.split(" ")[:2]
            if (
                entry.get("status") == "Pull complete"
                and entry.get("downloaded")
                and status_changed
                and " Download complete" not in shown.get(key, "")
            ):
                # downloaded and unpacked in one pass: docker's two lines, in its order
                out.write(progress_line({**entry, "status": "Download complete"}) + "\n")
            if text != shown.get(key) and (tty or status_changed):
                out.write(text + "\n")
                out.flush()
                shown[key] = text
        if current.done:
            child = current.children.order_by("id").first()
            if current.state == Job.State.SUCCEEDED and child is not None:
                current = child
                continue
            return current
        if watchdog is not None:
            watchdog.check(current)
        time.sleep(delay)
        delay = min(delay * 1.5, poll)


def follow_to_end(
    job: Job,
    stdout: Out,
    stderr: Out,
    *,
    what: str,
    header: str | None = None,
) -> Job:
    """What a command does with the job it queued: print ``header`` and then progress until
    the job (and the jobs it started) end, saying so when no worker runs it, and raise
    CommandError with the one-line message of a failure (or saying it was cancelled).
    Returns the last job of the chain."""
    if header is not None:
        stdout.write(header)
    last = follow(job, stdout, tty=stdout.isatty(), watchdog=Watchdog(stderr, what=what))
    if last.state == Job.State.FAILED:
        raise CommandError(one_line(last.error))
    if last.state == Job.State.CANCELLED:
        # ended, not failed: said plainly, and the command goes no further (nothing to report)
        stdout.write("cancelled\n")
        raise CommandError(f"{what} job {last.pk} was cancelled")
    return last
