"""Following a job from the command line, printing progress the way ``docker pull`` does."""

from __future__ import annotations

import time
from typing import TextIO

from celery import current_app
from django.conf import settings
from django.core.management.base import CommandError

from layerhub.core.humanize import human_size
from layerhub.jobs.models import Job


def worker_answers(timeout: float = 2.0) -> bool:
    """Whether at least one Celery worker answers a ping."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return True
    try:
        return bool(current_app.control.ping(timeout=timeout))
    except Exception:  # a broker that is down answers nothing either
        return False


def _line(entry: dict[str, object]) -> str:
    digest = str(entry["digest"]).split(":")[-1][:12]
    status = str(entry["status"])
    current, total = entry.get("current"), entry.get("total")
    if status in ("Downloading", "Extracting") and isinstance(current, int) and current:
        return f"{digest}: {status} {human_size(current)}/{human_size(int(total or 0))}"
    return f"{digest}: {status}"


def follow(job: Job, out: TextIO, *, poll: float = 0.2, tty: bool = False) -> Job:
    """Print each layer's status as it changes until the job and the jobs it started end.

    Returns the last job of the chain (a pull's unpack job, say) as it ended.
    """
    shown: dict[str, str] = {}
    current = job
    while True:
        current.refresh_from_db()
        for entry in current.progress or []:
            text = _line(entry)
            key = f"{entry['digest']}"
            status_changed = shown.get(key, "").split(" ")[:2] != text.split(" ")[:2]
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
        time.sleep(poll)


def follow_to_end(
    job: Job, stdout: TextIO, stderr: TextIO, *, what: str, header: str | None = None
) -> Job:
    """What a command does with the job it queued: warn when no worker answers, print
    ``header`` and then progress until the job (and the jobs it started) end, and raise
    CommandError with the message of a failure. Returns the last job of the chain."""
    if not worker_answers():
        stderr.write(
            f"no worker answers yet: the {what} waits in the queue until one runs "
            "(`make dev` starts one)"
        )
    if header is not None:
        stdout.write(header)
    last = follow(job, stdout, tty=stdout.isatty())
    if last.state == Job.State.FAILED:
        raise CommandError(last.error)
    return last
