"""End to end over the API, with a real Celery worker on a queue of its own and a registry
behind basic auth: log in for a team, pull, read the sizes, create a container, write a file,
commit, push, and read the pushed image back from the registry with skopeo. Another team,
without the login, cannot pull through it."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.contrib.auth.models import User
from pytest_django import Settings
from rest_framework.test import APIClient

from layerhub.accounts.models import Membership, Role, Team
from layerhub.jobs.presence import workers_present
from tests.api.conftest import token_client
from tests.conftest import delete_queue_keys
from tests.registry.conftest import Seed, basic_registry, seed  # noqa: F401 (fixtures)
from tests.registry.test_worker import start_worker, stop_worker, wait_for
from tests.support.database import database_url
from tests.support.registry import SKOPEO_BIN, Registry
from workers import app

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(broker: str, settings: Settings) -> Iterator[None]:
    """A real Celery worker taking this test's queue (the ``broker`` fixture's own), on the
    test database and store. The API queues jobs through this process' Celery app, so the
    worker listens on that app's broker; its queue's keys go afterwards."""
    broker_url = str(app.conf.broker_url)
    queue = settings.LAYERHUB_QUEUE
    env = {
        **os.environ,
        "REDIS_URL": broker_url,
        "LAYERHUB_QUEUE": queue,
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "LAYERHUB_EXPORT_DIR": str(settings.LAYERHUB_EXPORT_DIR),
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    proc = start_worker(env)
    try:
        wait_for(lambda: bool(workers_present(queue)), 60, "the worker to start")
        yield
    finally:
        stop_worker(proc)
        client = redis.Redis.from_url(broker_url)
        delete_queue_keys(client, queue)
        client.close()


def _finished(client: APIClient, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Poll the job (and the jobs it started) until they have all ended."""
    deadline = time.monotonic() + timeout
    while True:
        current: dict[str, Any] = client.get(f"/api/v1/jobs/{job['id']}/").json()
        states = [current["state"], *(child["state"] for child in current["children"])]
        if all(state in ("succeeded", "failed", "cancelled") for state in states):
            return current
        assert time.monotonic() < deadline, f"job {job['id']} still {states}"
        time.sleep(0.2)


def _skopeo(*args: str) -> str:
    assert SKOPEO_BIN is not None
    done = subprocess.run(
        [SKOPEO_BIN, *args], check=True, capture_output=True, text=True, timeout=120
    )
    return done.stdout


def _file_in_layer(layout: Path, digest: str, name: str) -> bytes | None:
    blob = (layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as layer:
        for member in layer.getmembers():
            if member.name.lstrip("./") == name:
                extracted = layer.extractfile(member)
                return extracted.read() if extracted is not None else None
    return None


def test_login_pull_sizes_container_commit_push_and_read_back(
    basic_registry: Registry,  # noqa: F811 (fixture)
    seed: Seed,  # noqa: F811 (fixture)
    worker: None,
    tmp_path: Path,
) -> None:
    team = Team.objects.create(name="alpha")
    owner = User.objects.create_user("owner")
    Membership.objects.create(team=team, user=owner, role=Role.OWNER)
    other = Team.objects.create(name="beta")
    stranger = User.objects.create_user("stranger")
    Membership.objects.create(team=other, user=stranger, role=Role.OWNER)
    api = token_client(owner)
    host = basic_registry.host

    login = api.post(
        "/api/v1/registry-logins/",
        {
            "team": "alpha",
            "host": host,
            "username": basic_registry.username,
            "password": basic_registry.password,
        },
    )
    assert login.status_code == 201, login.content
    assert login.json() == {
        "id": login.json()["id"],
        "team": "alpha",
        "host": host,
        "username": basic_registry.username,
        "insecure": False,
    }

    pull = api.post("/api/v1/images/pull/", {"reference": f"{host}/team/app:v1"})
    assert pull.status_code == 202, pull.content
    pulled = _finished(api, pull.json())
    assert pulled["state"] == "succeeded", pulled["error"]
    assert pulled["children"] == []  # the pull unpacked every layer itself
    assert pulled["bytes_done"] == pulled["bytes_total"] > 0

    # beta has no login for this registry: its pull is refused by the registry, not let
    # through with alpha's
    refused = token_client(stranger).post(
        "/api/v1/images/pull/", {"reference": f"{host}/team/app:v1", "team": "beta"}
    )
    assert refused.status_code == 202
    failed = _finished(token_client(stranger), refused.json())
    assert failed["state"] == "failed"
    assert failed["error"] == f"{host} requires a login (HTTP basic): add credentials for it"

    listed = api.get("/api/v1/images/", {"reference": f"{host}/team/app:v1"}).json()
    assert listed["count"] == 1
    image = api.get(listed["results"][0]["url"]).json()
    assert image["manifest_digest"] == seed.app_image.manifest.digest
    assert image["pending_layers"] == 0
    assert image["size"] == image["shared_size"] + image["unique_size"] > 0
    assert image["size"] == sum(row["layer"]["unpacked_size"] for row in image["layers"])
    df = api.get("/api/v1/system/df/").json()
    assert df["totals"]["images"] == 1
    assert df["totals"]["size_bytes"] == image["size"]

    container = api.post("/api/v1/containers/", {"image": image["id"], "name": "e2e"})
    assert container.status_code == 201, container.content
    written = api.post(
        "/api/v1/containers/e2e/files/", {"path": "/app/hello.txt", "content": "hello, API\n"}
    )
    assert written.status_code == 201, written.content
    diff = api.get("/api/v1/containers/e2e/diff/").json()["results"]
    assert {"kind": "A", "path": "/app/hello.txt"} in diff

    commit = api.post(
        "/api/v1/containers/e2e/commit/",
        {
            "repository": f"{host}/team/app:e2e",
            "message": "a file from the API",
            "author": "layerhub tests",
            "changes": ['CMD ["cat", "/app/hello.txt"]'],
        },
    )
    assert commit.status_code == 202, commit.content
    committed = _finished(api, commit.json())
    assert committed["state"] == "succeeded", committed["error"]
    new_image = api.get(f"/api/v1/images/{committed['image']}/").json()
    assert f"{host}/team/app:e2e" in new_image["references"]
    assert len(new_image["layers"]) == len(image["layers"]) + 1
    assert new_image["config"]["Cmd"] == ["cat", "/app/hello.txt"]

    push = api.post(
        f"/api/v1/images/{new_image['id']}/push/", {"reference": f"{host}/team/pushed:1"}
    )
    assert push.status_code == 202, push.content
    pushed = _finished(api, push.json())
    assert pushed["state"] == "succeeded", pushed["error"]

    creds = f"{basic_registry.username}:{basic_registry.password}"
    remote = f"docker://{host}/team/pushed:1"
    inspected = json.loads(_skopeo("inspect", "--tls-verify=false", "--creds", creds, remote))
    assert inspected["Digest"] == new_image["manifest_digest"]
    layout = tmp_path / "layout"
    _skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--src-creds",
        creds,
        remote,
        f"oci:{layout}:pushed",
    )
    top = new_image["layers"][-1]["layer"]["digest"]
    assert _file_in_layer(layout, top, "app/hello.txt") == b"hello, API\n"
