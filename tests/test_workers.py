"""The Celery app and the store_sweep_tmp task: in process, and in a real worker over Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from celery.signals import worker_ready
from django.conf import settings

from layerhub.core.store import get_store
from workers import app
from workers.tasks import store_sweep_tmp

ROOT = Path(__file__).resolve().parent.parent


def get_store_tmp() -> Path:
    """The store's tmp/ (opening the store creates it)."""
    get_store()
    return Path(settings.LAYERHUB_STORE) / "tmp"


def leave_leftovers(tmp: Path, count: int) -> list[Path]:
    """What a crashed download leaves in tmp/: a file and an unpack folder."""
    paths = []
    for n in range(count):
        path = tmp / f"leftover-{n}"
        if n % 2:
            (path / "usr").mkdir(parents=True)
        else:
            path.write_bytes(b"partial")
        paths.append(path)
    return paths


def test_app_is_configured_from_django_settings() -> None:
    assert app.conf.broker_url == settings.REDIS_URL
    assert app.conf.task_always_eager is False
    assert "layerhub.store_sweep_tmp" in app.tasks


def test_store_sweep_tmp_removes_leftovers() -> None:
    tmp = get_store_tmp()
    leftovers = leave_leftovers(tmp, 2)
    assert store_sweep_tmp() == 2
    assert not any(path.exists() for path in leftovers)


def test_worker_ready_sweeps_tmp() -> None:
    tmp = get_store_tmp()
    leftovers = leave_leftovers(tmp, 3)
    worker_ready.send(sender=None)
    assert not any(path.exists() for path in leftovers)


def wait_until_gone(paths: list[Path], worker: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(path.exists() for path in paths):
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"still there after {timeout}s: {paths}"
        time.sleep(0.2)


def test_real_worker_sweeps_on_start_and_on_request(broker: str, layerhub_store: Path) -> None:
    tmp = get_store_tmp()
    at_start = leave_leftovers(tmp, 2)
    env = {**os.environ, "REDIS_URL": broker, "LAYERHUB_STORE": str(layerhub_store)}
    argv = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-P", "solo", "-l", "info"]
    worker = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until_gone(at_start, worker, timeout=30)
        requested = leave_leftovers(tmp, 1)
        with app.connection_for_write(broker) as connection:
            store_sweep_tmp.apply_async(connection=connection, queue=settings.LAYERHUB_QUEUE)  # type: ignore[call-arg]
        wait_until_gone(requested, worker, timeout=30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def test_the_tests_delete_only_their_own_queues_keys(broker: str) -> None:
    # Two test runs (or a test run and `make dev`) share a Redis: cleaning up after one must
    # not take the other's queue, presence or unacknowledged messages with it.
    import json
    import uuid

    import redis

    from tests.conftest import delete_queue_keys

    client = redis.Redis.from_url(broker)
    ours, theirs = f"layerhub-test-{uuid.uuid4().hex}", f"layerhub-{uuid.uuid4().hex}"
    try:
        for queue in (ours, theirs):
            client.lpush(queue, b"message")
            client.sadd(f"_kombu.binding.{queue}", b"binding")
            client.zadd(f"layerhub:workers:{queue}", {"worker": 1.0})
            client.rpush(f"layerhub:calls:{queue}.host.beta", b"call")
            client.hset("unacked", f"tag-{queue}", json.dumps([{}, queue, queue]))
        delete_queue_keys(client, ours)
        per_queue = ("_kombu.binding.{}", "layerhub:workers:{}", "layerhub:calls:{}.host.beta")
        assert not client.exists(ours, *(key.format(ours) for key in per_queue))
        assert not client.hexists("unacked", f"tag-{ours}")
        assert client.exists(theirs, *(key.format(theirs) for key in per_queue)) == 4
        assert client.hexists("unacked", f"tag-{theirs}")
    finally:
        delete_queue_keys(client, theirs)
        client.close()
