"""With DEBUG off the site serves its pages and static files: under gunicorn after
collectstatic (the production command), and under `make dev` (scripts/dev.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.database import database_url
from tests.support.processes import stop_group
from tests.support.registry import free_port

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers.get("Content-Type", ""), response.read()


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the server exited with {proc.returncode}"
        try:
            get(url)
            return
        except OSError:
            assert time.monotonic() < deadline, f"no answer at {url} after {timeout}s"
            time.sleep(0.2)


@pytest.fixture
def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DEBUG": "off",
        "SECRET_KEY": "production-test-" + "k" * 40,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
        "STATIC_ROOT": str(tmp_path / "static-root"),
    }


def check_page_and_static_file(base: str) -> None:
    status, content_type, body = get(f"{base}/")
    assert status == 200
    assert content_type.startswith("text/html")
    # hashed names from collectstatic's manifest, served by whitenoise
    css = re.search(rb'href="(/static/css/layerhub\.[0-9a-f]{12}\.css)"', body)
    assert css is not None, body[:500]
    status, content_type, _ = get(base + css.group(1).decode())
    assert (status, content_type.split(";")[0]) == (200, "text/css")
    js = re.search(rb'src="(/static/vendor/htmx\.min\.[0-9a-f]{12}\.js)"', body)
    assert js is not None
    status, content_type, _ = get(base + js.group(1).decode())
    assert status == 200
    assert "javascript" in content_type


def test_gunicorn_after_collectstatic_serves_pages_and_static_files(
    production_env: dict[str, str],
) -> None:
    collect = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=production_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collect.returncode == 0, collect.stderr
    assert (Path(production_env["STATIC_ROOT"]) / "staticfiles.json").is_file()
    port = free_port()
    gunicorn = Path(sys.executable).with_name("gunicorn")
    server = subprocess.Popen(
        [str(gunicorn), "layerhub.wsgi", "-b", f"127.0.0.1:{port}", "-w", "2"],
        cwd=ROOT,
        env=production_env,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", server)
        check_page_and_static_file(f"http://127.0.0.1:{port}")
    finally:
        stop_group(server)


def test_make_dev_with_debug_off_serves_pages_and_static_files(
    production_env: dict[str, str], broker: str
) -> None:
    port = free_port()
    env = {
        **production_env,
        "PORT": str(port),
        "REDIS_URL": broker,
        "LAYERHUB_QUEUE": settings.LAYERHUB_QUEUE,  # the broker fixture cleans it up
    }
    dev = subprocess.Popen(
        [sys.executable, "scripts/dev.py"], cwd=ROOT, env=env, start_new_session=True
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", dev, timeout=90)
        check_page_and_static_file(f"http://127.0.0.1:{port}")
    finally:
        stop_group(dev)
    assert dev.returncode == 0
