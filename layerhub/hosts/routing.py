"""Where work for a host goes, and whether the host is there to do it.

Each worker takes jobs from the deployment's queue (LAYERHUB_QUEUE) and from its host's own
queue, ``<LAYERHUB_QUEUE>.host.<LAYERHUB_HOST>``. A job that needs one host's disk (a
container's commit, say) is sent to that host's queue; a host whose worker stopped stamping
its heartbeat for LAYERHUB_HOST_GONE_AFTER seconds is unavailable, and the jobs queued for it
fail saying so (``jobs_stranded_fail``) instead of waiting forever.
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from layerhub.engine.errors import LayerhubError
from layerhub.hosts.models import Host, current_host, gone_before

logger = logging.getLogger(__name__)


class HostUnavailable(LayerhubError):
    """The host that holds a container (or the data a job needs) does not answer: its worker
    stopped stamping its heartbeat, or did not reply in time."""


def host_queue(host: str) -> str:
    """The Celery queue of ``host``'s own jobs."""
    return f"{settings.LAYERHUB_QUEUE}.host.{host}"


def worker_queues() -> list[str]:
    """The queues this host's worker takes jobs from: the shared one and its own."""
    return [settings.LAYERHUB_QUEUE, host_queue(current_host())]


def host_unavailable_message(name: str, *, now: datetime | None = None) -> str | None:
    """Why ``name`` is unavailable (no heartbeat lately, stopped, never seen), or None when
    its worker is alive."""
    row = Host.objects.filter(name=name).first()
    if row is None:
        return f"host {name} is unavailable: no worker of that host has ever reported"
    now = now or timezone.now()
    if row.stopped_at is not None:
        stopped = f"{row.stopped_at:%Y-%m-%d %H:%M:%S}"
        return f"host {name} is unavailable: its worker stopped at {stopped} UTC"
    if row.heartbeat_at < gone_before(now):
        age = int((now - row.heartbeat_at).total_seconds())
        return f"host {name} is unavailable: no heartbeat from its worker for {age}s"
    return None


def host_check(name: str) -> None:
    """Raise HostUnavailable when ``name`` is not this host and its worker is gone."""
    if name == current_host():
        return
    message = host_unavailable_message(name)
    if message is not None:
        raise HostUnavailable(message)


def jobs_stranded_fail(now: datetime | None = None) -> int:
    """Fail every job queued for a host that is gone, once it has waited
    LAYERHUB_HOST_GONE_AFTER seconds (a host restarting gets that long to come back); return
    how many. Safe from anywhere: each job moves with a conditional update."""
    from layerhub.jobs.models import Job

    now = now or timezone.now()
    waiting = Job.objects.filter(state=Job.State.QUEUED, created_at__lt=gone_before(now)).exclude(
        host=""
    )
    failed = 0
    verdicts: dict[str, str | None] = {}
    for job in waiting.only("pk", "host"):
        if job.host not in verdicts:
            verdicts[job.host] = host_unavailable_message(job.host, now=now)
        message = verdicts[job.host]
        if message is None:
            continue
        failed += Job.objects.filter(pk=job.pk, state=Job.State.QUEUED).update(
            state=Job.State.FAILED, error=message, finished_at=now
        )
        logger.warning("job %s failed: %s", job.pk, message)
    return failed
