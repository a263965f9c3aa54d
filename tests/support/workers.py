"""Real Celery workers started by a test as hosts of one deployment, and waiting on what they do."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from layerhub.hosts.routing import host_unavailable_message
from layerhub.jobs.models import Job
from layerhub.jobs.presence import workers_present

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; fail the test saying ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def job_ended(job: Job) -> Callable[[], bool]:
    """A predicate: whether ``job`` has ended (its row refreshed on each call)."""

    def check() -> bool:
        job.refresh_from_db()
        return job.done

    return check


def start_host_worker(
    name: str, env: Mapping[str, str], *, queue: str, timeout: float = 90
) -> subprocess.Popen[bytes]:
    """A worker (one process, in a session of its own) as host ``name`` with ``env``; returns
    once it listens on its host's queue ``<queue>.host.<name>``. Stop it with ``stop_group``."""
    env = {**env, "LAYERHUB_HOST": name}
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-c", "1"]
    argv += ["-l", "warning", "-n", f"{name}@%h"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    host_queue = f"{queue}.host.{name}"
    wait_until(lambda: bool(workers_present(host_queue)), timeout, f"the worker of host {name}")
    # and its heartbeat in the database, which callers and the router judge a host by
    wait_until(
        lambda: host_unavailable_message(name) is None, timeout, f"the heartbeat of host {name}"
    )
    return proc
