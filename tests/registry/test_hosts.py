"""Several hosts on one machine: each keeps its own snapshots, containers live on one host, and
their work runs there.

The hosts share one store's blobs (one LAYERHUB_STORE; a fleet on several machines shares
them through the object store) and keep their snapshots apart (LAYERHUB_SNAPSHOTS each). The
last test runs real Celery workers as hosts ``alpha`` and ``beta`` while this process is a web
server on a third host (``web``) that holds nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
from celery import current_app
from django.test import Client
from pytest_django import Settings

from layerhub.containers.files import container_files
from layerhub.containers.models import Container
from layerhub.containers.services import (
    container_commit,
    container_create,
    container_diff,
    container_rm,
    container_write_file,
)
from layerhub.engine.container import Change
from layerhub.engine.digest import chain_ids, digest_hex
from layerhub.hosts.calls import HostCallFailed, host_call
from layerhub.hosts.models import Host
from layerhub.hosts.routing import HostUnavailable
from layerhub.images.models import Image, Layer, Snapshot
from layerhub.images.removal import host_snapshots_collect
from layerhub.images.services import image_pull
from layerhub.images.services.transfer import image_remove
from layerhub.images.sizes import image_delete_plan
from layerhub.jobs.models import Job
from tests.conftest import delete_queue_keys
from tests.registry.conftest import Seed
from tests.support.database import database_url
from tests.support.hostile import Request, serve
from tests.support.processes import stop_group
from tests.support.registry import Registry
from tests.support.teams import default_team
from tests.support.workers import job_ended, start_host_worker, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


def on_host(settings: Settings, name: str, root: Path) -> Path:
    """Make this process host ``name``, with its snapshots under ``root/name``."""
    settings.LAYERHUB_HOST = name
    settings.LAYERHUB_SNAPSHOTS = root / name
    return root / name


def snapshot_dirs(root: Path) -> set[str]:
    return {entry.name for entry in root.iterdir()} if root.is_dir() else set()


def pulled(registry: Registry) -> Image:
    job = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    return job.image


@pytest.mark.usefixtures("eager")
def test_each_host_keeps_and_removes_its_own_snapshots(
    registry: Registry, seed: Seed, settings: Settings, tmp_path: Path
) -> None:
    alpha = on_host(settings, "alpha", tmp_path)
    image = pulled(registry)
    chains = chain_ids([seed.base.diff_id, seed.app.diff_id])
    hexes = {digest_hex(chain) for chain in chains}
    assert snapshot_dirs(alpha) == hexes
    assert set(Snapshot.objects.values_list("host", flat=True)) == {"alpha"}

    # beta has none: a container there unpacks them from the blobs on beta itself
    beta = on_host(settings, "beta", tmp_path)
    box = container_create(image=image.manifest_digest, team=default_team(), name="box")
    assert box.host == "beta"
    assert snapshot_dirs(beta) == hexes
    sizes = {
        (row.host, row.layer.chain_id): row.size for row in Snapshot.objects.select_related("layer")
    }
    for chain in chains:
        assert sizes[("alpha", chain)] == sizes[("beta", chain)]
        assert sizes[("beta", chain)] == Layer.objects.get(chain_id=chain).unpacked_size
    container_write_file(container=box, path="/app/note", data=b"on beta\n")
    assert container_diff(container=box) == [Change("C", "/app"), Change("A", "/app/note")]

    container_rm(container=box)
    plan = image_delete_plan(image)
    per_host = sum(sizes[("beta", chain)] for chain in chains)
    assert plan.host_snapshots == {"alpha": per_host, "beta": per_host}
    assert plan.several_hosts
    assert plan.frees_bytes == plan.blob_bytes + per_host  # one host's figure, as before

    # rmi on beta removes beta's snapshots; alpha's files are alpha's to remove
    image_remove(image=image.manifest_digest, force=True)
    assert snapshot_dirs(beta) == set()
    assert snapshot_dirs(alpha) == hexes
    assert not Snapshot.objects.exists()
    on_host(settings, "alpha", tmp_path)
    assert sorted(host_snapshots_collect()) == sorted(chains)
    assert snapshot_dirs(alpha) == set()


# -- real workers as hosts -----------------------------------------------------------------


@pytest.fixture
def fleet(
    broker: str, settings: Settings, tmp_path: Path
) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Start a worker as host ``name`` (its own snapshot directory, the shared blobs and
    queue); all are stopped at the end, and this run's keys of the broker deleted."""
    settings.REDIS_URL = str(current_app.conf.broker_url)  # where host calls are answered
    base = {
        **os.environ,
        "REDIS_URL": settings.REDIS_URL,
        "LAYERHUB_QUEUE": settings.LAYERHUB_QUEUE,
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "DJANGO_SETTINGS_MODULE": "layerhub.settings",
        "LAYERHUB_JOB_HEARTBEAT": "0.5",
        "LAYERHUB_JOB_DEAD_AFTER": "5",
        "LAYERHUB_HOST_GONE_AFTER": "2",
    }
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> subprocess.Popen[bytes]:
        env = {**base, "LAYERHUB_SNAPSHOTS": str(tmp_path / name)}
        proc = start_host_worker(name, env, queue=settings.LAYERHUB_QUEUE)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_group(proc)
    client = redis.Redis.from_url(settings.REDIS_URL)
    delete_queue_keys(client, settings.LAYERHUB_QUEUE)
    client.close()


def test_workers_as_hosts_run_a_containers_work_on_its_host(
    registry: Registry,
    seed: Seed,
    settings: Settings,
    tmp_path: Path,
    fleet: Callable[[str], subprocess.Popen[bytes]],
    admin_client: Client,
) -> None:
    settings.LAYERHUB_HOST = "web"  # this process: a web server holding no snapshots
    settings.LAYERHUB_SNAPSHOTS = tmp_path / "web"
    settings.LAYERHUB_HOST_GONE_AFTER = 2.0
    settings.LAYERHUB_HOST_CALL_TIMEOUT = 60.0
    fleet("alpha")  # alone at first: the pull runs on alpha

    pull = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")

    wait_until(job_ended(pull), 120, "the pull")
    assert pull.state == Job.State.SUCCEEDED, pull.error
    assert pull.image is not None
    chains = chain_ids([seed.base.diff_id, seed.app.diff_id])
    assert set(Snapshot.objects.values_list("host", flat=True)) == {"alpha"}

    # a container on beta: beta's worker makes it, and the snapshots beta lacks from the blobs
    beta_worker = fleet("beta")
    box = container_create(
        image=pull.image.manifest_digest, team=default_team(), name="box", host="beta"
    )
    assert box.host == "beta"
    assert (tmp_path / "beta" / digest_hex(chains[-1]) / "fs" / "app" / "run").is_file()
    assert not (tmp_path / "web").exists() or snapshot_dirs(tmp_path / "web") == set()
    assert set(
        Snapshot.objects.filter(host="beta").values_list("layer__chain_id", flat=True)
    ) == set(chains)

    # files and changes go through beta, and read back through it
    container_write_file(container=box, path="/app/note", data=b"written from web\n")
    assert container_diff(container=box) == [Change("C", "/app"), Change("A", "/app/note")]
    files = container_files(box)
    assert files.view.lstat("/app/note").st.st_size == len(b"written from web\n")
    with files.view.open("/app/note") as f:
        assert f.read() == b"written from web\n"
    assert [entry.path for entry in files.view.listdir("/app")] == ["/app/note", "/app/run"]
    page = admin_client.get(f"/containers/{box.name}/?path=/app")
    assert page.status_code == 200
    assert "note" in page.content.decode()
    download = admin_client.get(f"/containers/{box.name}/file/?path=/app/note&download=1")
    assert b"".join(download.streaming_content) == b"written from web\n"  # type: ignore[attr-defined]

    # the commit job goes to beta's queue; its new layer's snapshot is beta's
    commit = container_commit(container=box, repository="localhost/committed:1")
    assert commit.host == "beta"
    wait_until(job_ended(commit), 120, "the commit")
    assert commit.state == Job.State.SUCCEEDED, commit.error
    assert commit.image is not None
    top = commit.image.image_layers.order_by("-position").first()
    assert top is not None
    assert list(Snapshot.objects.filter(layer=top.layer).values_list("host", flat=True)) == ["beta"]

    # beta goes away: its container says so, and a job queued for it fails after the timeout
    os.killpg(beta_worker.pid, signal.SIGKILL)
    beta_worker.wait()
    wait_until(lambda: not Host.objects.get(name="beta").available, 30, "beta to be gone")
    with pytest.raises(HostUnavailable, match="host beta is unavailable: no heartbeat"):
        container_diff(container=box)
    page = admin_client.get(f"/containers/{box.name}/")
    assert page.status_code == 503
    assert "host unavailable" in page.content.decode()
    stranded = container_commit(container=box, repository="localhost/never:1")
    wait_until(job_ended(stranded), 60, "the job queued for beta to fail")
    assert stranded.state == Job.State.FAILED
    assert stranded.error.startswith("host beta is unavailable: no heartbeat from its worker")
    health = admin_client.get("/healthz").json()
    status = {host["name"]: host["status"] for host in health["hosts"]}
    assert status["alpha"] == "ok"
    assert status["beta"].startswith("unavailable")
    assert Container.objects.filter(name="box", host="beta").exists()


def test_a_host_whose_job_slot_is_busy_still_answers_calls(
    registry: Registry,
    seed: Seed,
    settings: Settings,
    tmp_path: Path,
    fleet: Callable[[str], subprocess.Popen[bytes]],
) -> None:
    """Calls are answered beside the job slots: a page waiting on a container's files gets its
    answer while every slot of the container's host is held by a long job."""
    settings.LAYERHUB_HOST = "web"  # this process: a web server holding no snapshots
    settings.LAYERHUB_SNAPSHOTS = tmp_path / "web"
    settings.LAYERHUB_HOST_GONE_AFTER = 2.0
    settings.LAYERHUB_HOST_CALL_TIMEOUT = 60.0
    fleet("beta")  # the only worker, with one job slot: every job is beta's
    pull = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    wait_until(job_ended(pull), 120, "the pull")
    assert pull.state == Job.State.SUCCEEDED, pull.error
    assert pull.image is not None
    box = container_create(
        image=pull.image.manifest_digest, team=default_team(), name="box", host="beta"
    )

    release = threading.Event()

    def stalls(request: Request) -> None:
        release.wait(120)  # a registry that does not answer: the pull holds beta's slot
        request.send(503)

    with serve(stalls) as stalled:
        try:
            stuck = image_pull(team=default_team(), reference=f"{stalled.host}/team/stuck:1")

            def holding_the_slot() -> bool:
                stuck.refresh_from_db()
                return stuck.state == Job.State.RUNNING and bool(stalled.seen)

            wait_until(holding_the_slot, 60, "the stalled pull to hold beta's job slot")
            # far less than the pull will wait: answered beside it, not after it
            settings.LAYERHUB_HOST_CALL_TIMEOUT = 15.0
            container_write_file(container=box, path="/app/busy", data=b"answered while busy\n")
            assert container_diff(container=box) == [
                Change("C", "/app"),
                Change("A", "/app/busy"),
            ]
            with container_files(box).view.open("/app/busy") as f:
                assert f.read() == b"answered while busy\n"
            stuck.refresh_from_db()
            assert stuck.state == Job.State.RUNNING  # the slot was busy all along
        finally:
            release.set()
    wait_until(job_ended(stuck), 120, "the stalled pull to end")


def _call_servers(worker: subprocess.Popen[bytes]) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(worker.pid).children():
        with contextlib.suppress(psutil.Error):  # one that just ended (a zombie)
            if child.status() != psutil.STATUS_ZOMBIE and "host_calls" in child.cmdline():
                found.append(child)
    return found


def test_the_call_server_is_started_again_and_leaves_with_its_worker(
    settings: Settings, tmp_path: Path, fleet: Callable[[str], subprocess.Popen[bytes]]
) -> None:
    """A worker answers its host's calls from a process of its own (never one that forks the
    pool): started again if it dies, gone when its worker is."""
    settings.LAYERHUB_HOST = "web"
    settings.LAYERHUB_HOST_CALL_TIMEOUT = 20.0
    worker = fleet("beta")

    def answered() -> None:  # an operation beta does not know: its answer says so
        with pytest.raises(HostCallFailed, match="does not know"):
            host_call("beta", "no.such.operation")

    answered()
    [first] = _call_servers(worker)
    first.kill()
    wait_until(
        lambda: [p.pid for p in _call_servers(worker)] not in ([], [first.pid]),
        30,
        "the worker to start its call server again",
    )
    answered()
    [second] = _call_servers(worker)
    os.kill(worker.pid, signal.SIGKILL)  # the worker alone, not its group
    worker.wait()
    wait_until(lambda: not second.is_running(), 30, "the call server to leave with its worker")
