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
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.jobs.models import Job
from layerhub.jobs.presence import workers_present
from tests.registry.conftest import Seed
from tests.support.database import database_url
from tests.support.processes import stop_group
from tests.support.proxy import FaultyProxy

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(broker: str, settings: Settings) -> dict[str, str]:
    settings.REDIS_URL = broker  # where this process looks for workers' presence
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


def start_worker(env: dict[str, str], *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-c", "1", "-l", "warning"]
    return subprocess.Popen([*argv, *extra], cwd=ROOT, env=env, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    stop_group(proc)  # a worker killed outright by the test already is fine


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Workers a test starts (append them), stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        stop_worker(proc)


@pytest.fixture
def worker(env: dict[str, str], workers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    workers.append(start_worker(env))
    return workers[-1]


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
    assert not job.children.exists()  # the pull unpacked every layer itself
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
    assert not job.children.exists()  # the pull unpacked every layer itself
    store = get_store()
    assert store.blobs.has(seed.base.digest)
    assert not any(p.exists() for p in leftovers)
    assert list(store.tmp.iterdir()) == []


def manage(
    env: dict[str, str], *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_worker_killed_outright_mid_pull_is_noticed_and_its_job_requeued(
    proxy: FaultyProxy,
    seed: Seed,
    env: dict[str, str],
    worker: subprocess.Popen[bytes],
    workers: list[subprocess.Popen[bytes]],
) -> None:
    proxy.delay = 3.0
    follower = subprocess.Popen(
        [sys.executable, "manage.py", "pull", f"{proxy.host}/team/app:v1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: Job.objects.filter(kind=Job.Kind.PULL).exists(), 30, "the pull job")
        job = Job.objects.get(kind=Job.Kind.PULL)

        def downloading() -> bool:
            job.refresh_from_db()
            return job.state == Job.State.RUNNING and bool(job.progress)

        wait_for(downloading, 60, "the pull to start downloading")
        os.kill(worker.pid, signal.SIGKILL)  # the main process: its pool child dies with it
        killed_at = time.monotonic()
        proxy.delay = 0.0
        # The CLI following the pull notices the heartbeat stopped, re-queues the job, and,
        # with no worker left, says so and ends instead of waiting forever.
        out, err = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 1, (out, err)
    assert "Traceback" not in err
    assert "the worker running this pull stopped; it is queued again (run 2 of 3)" in err
    assert "no worker took pull job" in err
    assert time.monotonic() - killed_at < 30
    job.refresh_from_db()
    assert (job.state, job.attempts) == (Job.State.QUEUED, 1)

    # A worker that starts later takes the re-queued job and finishes it.
    workers.append(start_worker(env))

    def ended() -> bool:
        job.refresh_from_db()
        return job.done

    wait_for(ended, 60, "the pull to end")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.attempts == 2
    assert not job.children.exists()  # the pull unpacked every layer itself


def test_a_live_worker_sweeps_the_job_of_a_worker_killed_outright(
    proxy: FaultyProxy,
    seed: Seed,
    env: dict[str, str],
    worker: subprocess.Popen[bytes],
    workers: list[subprocess.Popen[bytes]],
) -> None:
    proxy.delay = 3.0
    queued = manage(env, "pull", "--no-wait", f"{proxy.host}/team/app:v1")
    assert queued.returncode == 0, queued.stderr
    job = Job.objects.get(kind=Job.Kind.PULL)

    def downloading() -> bool:
        job.refresh_from_db()
        return job.state == Job.State.RUNNING and bool(job.progress)

    wait_for(downloading, 60, "the pull to start downloading")
    workers.append(start_worker(env))  # a second worker, idle: nothing else is queued
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    proxy.delay = 0.0

    def ended() -> bool:
        job.refresh_from_db()
        return job.done

    wait_for(ended, 60, "the pull to end")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.attempts == 2
    assert time.monotonic() - killed_at < 30, "re-run within seconds, not Redis' hour"


def test_two_deployments_on_one_redis_never_take_each_others_jobs(
    seed: Seed,
    proxy: FaultyProxy,
    env: dict[str, str],
    workers: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    from layerhub.jobs.follow import worker_answers

    # Another checkout: its own database and store, so its own queue.
    other = {
        **env,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'other.sqlite3'}",
        "LAYERHUB_STORE": str(tmp_path / "other-store"),
        "LAYERHUB_QUEUE": f"{settings.LAYERHUB_QUEUE}-other",
    }
    assert manage(other, "migrate", "-v0").returncode == 0
    workers.append(start_worker(other))
    wait_for(lambda: bool(workers_present(other["LAYERHUB_QUEUE"])), 60, "the other worker")
    # a worker of another deployment is no worker of ours (a broadcast ping said it was)
    assert not worker_answers()

    queued = manage(env, "pull", "--no-wait", f"{proxy.host}/team/app:v1")
    assert queued.returncode == 0, queued.stderr
    job = Job.objects.get(kind=Job.Kind.PULL)
    time.sleep(3)
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED, "the other deployment's worker left it alone"
    assert job.attempts == 0

    workers.append(start_worker(env))
    started = time.monotonic()
    wait_for(worker_answers, 60, "our worker's presence")
    assert time.monotonic() - started < 60

    def ended() -> bool:
        job.refresh_from_db()
        return job.done

    wait_for(ended, 60, "the pull to end")
    assert job.state == Job.State.SUCCEEDED, job.error


def test_worker_presence_is_read_at_once(
    env: dict[str, str], worker: subprocess.Popen[bytes]
) -> None:
    from layerhub.jobs.follow import worker_answers

    wait_for(worker_answers, 60, "the worker's presence")
    started = time.monotonic()
    assert worker_answers()
    assert time.monotonic() - started < 0.5, "one read, no broadcast waiting out a timeout"
    stop_worker(worker)
    assert not workers_present(settings.LAYERHUB_QUEUE), "a stopped worker withdraws itself"
