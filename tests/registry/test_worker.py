"""Pulls through real processes: the pull command, a Celery worker, Redis and the database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from layerhub.core.store import get_store
from layerhub.jobs.models import Job
from tests.registry.conftest import Seed
from tests.support.proxy import FaultyProxy

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.fixture
def env(broker: str) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": broker,
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        # tiny, so a killed worker's job is noticed in seconds
        "LAYERHUB_JOB_HEARTBEAT": "0.3",
        "LAYERHUB_JOB_DEAD_AFTER": "2",
    }


@pytest.fixture
def worker(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-c", "1", "-l", "warning"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
    yield proc
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_pull_command_through_a_real_worker(
    proxy: FaultyProxy, seed: Seed, env: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "pull", f"{proxy.host}/team/app:v1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    base = seed.base.digest.split(":")[1][:12]
    assert f"{base}: Pull complete" in result.stdout
    assert f"Digest: {seed.app_image.manifest.digest}" in result.stdout
    job = Job.objects.get(kind=Job.Kind.PULL)
    assert job.state == Job.State.SUCCEEDED
    assert job.children.get().state == Job.State.SUCCEEDED
    assert get_store().snapshots.exists(seed.base.diff_id)


def _pool_children(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def test_worker_killed_mid_pull_is_run_again_and_completes(
    proxy: FaultyProxy, seed: Seed, env: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    proxy.delay = 3.0  # every blob body waits: the pull is mid-download for a while
    queued = subprocess.run(
        [sys.executable, "manage.py", "pull", "--no-wait", f"{proxy.host}/team/app:v1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert queued.returncode == 0, queued.stderr
    job = Job.objects.get(kind=Job.Kind.PULL)

    def downloading() -> bool:
        job.refresh_from_db()
        return job.state == Job.State.RUNNING and bool(job.progress)

    wait_for(downloading, 60, "the pull to start downloading")
    wait_for(lambda: proxy.blob_gets[seed.base.digest] > 0, 30, "the base layer request")
    leftovers = list(get_store().tmp.iterdir())
    assert leftovers, "a download in flight has its temporary blob in tmp/"
    children = _pool_children(worker.pid)
    assert children, "the worker has a pool process"
    for pid in children:
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
    proxy.delay = 0.0

    def ended() -> bool:
        job.refresh_from_db()
        return job.done

    wait_for(ended, 90, "the pull to end")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.attempts == 2
    wait_for(lambda: job.children.filter(state=Job.State.SUCCEEDED).exists(), 60, "the unpack")
    store = get_store()
    assert store.blobs.has(seed.base.digest)
    assert not any(p.exists() for p in leftovers)
    assert list(store.tmp.iterdir()) == []
