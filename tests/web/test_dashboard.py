"""The dashboard home page and the health check."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from django.db import OperationalError, connection
from django.test import Client
from pytest_django import Settings

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store

pytestmark = pytest.mark.django_db

BLOB_SIZES = (1_500_000, 72_800)


def fill_store(root: Path) -> None:
    """Two blobs, one snapshot and one container, laid out as DESIGN.md describes the store."""
    get_store()  # creates the store's folders
    for size in BLOB_SIZES:
        data = bytes([size % 251]) * size
        (root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    snapshot = root / "snapshots" / hashlib.sha256(b"chain").hexdigest() / "fs"
    (snapshot / "etc").mkdir(parents=True)
    (snapshot / "etc" / "os-release").write_bytes(b"x" * 40_000)
    (root / "containers" / "c0ffee").mkdir()


def figure(html: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}"[^>]*>([^<]*)<', html)
    assert match, f"no {name} on the page"
    return match.group(1).strip()


def test_home_shows_the_store_figures(admin_client: Client, layerhub_store: Path) -> None:
    fill_store(layerhub_store)
    usage = get_store().usage()
    assert (usage.blob_count, usage.snapshot_count, usage.container_count) == (2, 1, 1)
    assert usage.blob_bytes == sum(BLOB_SIZES)
    assert usage.snapshot_bytes >= 40_000

    response = admin_client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>layerhub</title>" in html
    assert figure(html, "blob_bytes") == "1.57MB"
    assert figure(html, "blob_count") == "2 blobs"
    assert figure(html, "snapshot_bytes") == human_size(usage.snapshot_bytes)
    assert figure(html, "snapshot_count") == "1 unpacked layer"
    assert figure(html, "container_count") == "1"
    assert figure(html, "store_root") == str(layerhub_store)
    assert "htmx.min.js" in html


def test_home_on_an_empty_store(admin_client: Client, layerhub_store: Path) -> None:
    html = admin_client.get("/").content.decode()
    assert figure(html, "blob_bytes") == "0B"
    assert figure(html, "blob_count") == "0 blobs"
    assert figure(html, "container_count") == "0"


def test_healthz_ok(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "store": "ok"}


def test_healthz_reports_a_broken_store(client: Client, settings: Settings, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    settings.LAYERHUB_STORE = not_a_dir

    response = client.get("/healthz")

    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["database"] == "ok"
    assert body["store"].startswith("error")


def test_healthz_reports_a_broken_database(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "database": "error: OperationalError: connection refused",
        "store": "ok",
    }
