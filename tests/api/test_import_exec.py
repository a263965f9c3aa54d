"""Importing an uploaded archive over the API, and running a command in a container made
from it: the busybox base image, built here from Debian's static busybox."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine.runtime import runtime_unavailable_reason
from layerhub.jobs.models import Job
from tests.api.conftest import World, token_client
from tests.support.busybox import busybox_layer
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, write_layout
from tests.support.peers import require

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager")]
BASE = "localhost/base:1"


def _layout_tar(tmp_path: Path) -> bytes:
    """An OCI image layout holding the busybox base image as BASE, as a tar."""
    raw = busybox_layer()
    layer = LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )
    layout = write_layout(tmp_path / "layout", {BASE: OciImage([layer])})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(layout, arcname=".")
    return out.getvalue()


def _upload(data: bytes, name: str = "base.tar") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="application/x-tar")


def test_import_an_upload_then_run_a_command_in_it(
    world: World,
    tmp_path: Path,
    settings: Settings,
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    developer = token_client(world.users["developer"])
    with django_capture_on_commit_callbacks(execute=True):
        response = developer.post(
            "/api/v1/images/import/",
            {"archive": _upload(_layout_tar(tmp_path)), "team": "alpha"},
            format="multipart",
        )
    assert response.status_code == 202, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.team == world.alpha
    assert job.state == Job.State.SUCCEEDED, job.error
    assert list(Path(settings.LAYERHUB_UPLOAD_DIR).iterdir()) == []  # the upload is spent
    found = developer.get("/api/v1/images/", {"reference": BASE}).json()["results"]
    assert [image["references"] for image in found] == [[BASE]]
    assert found[0]["pending_layers"] == 0

    created = developer.post("/api/v1/containers/", {"image": found[0]["id"], "name": "box"})
    assert created.status_code == 201, created.content
    require(
        runtime_unavailable_reason(get_store().whiteouts) is None,
        "running commands needs root and runc",
    )
    ran = developer.post(
        "/api/v1/containers/box/exec/",
        {"command_line": "sh -c 'echo hello from box; echo oops >&2; exit 3'", "timeout": 30},
    )
    assert ran.status_code == 200, ran.content
    result = ran.json()
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (
        3,
        "hello from box\n",
        "oops\n",
    )
    assert result["stdout_truncated"] is False
    missing = developer.post("/api/v1/containers/box/exec/", {"command": ["/no/such/cmd"]})
    assert missing.json()["exit_code"] == 127


def test_import_refusals(world: World, settings: Settings) -> None:
    developer = token_client(world.users["developer"])
    uploads = Path(settings.LAYERHUB_UPLOAD_DIR)
    missing = developer.post("/api/v1/images/import/", {"team": "alpha"}, format="multipart")
    assert missing.status_code == 400
    assert missing.json()["error"]["fields"] == {"archive": ["No file was submitted."]}
    viewer = token_client(world.users["viewer"]).post(
        "/api/v1/images/import/", {"archive": _upload(b"x" * 100)}, format="multipart"
    )
    assert viewer.status_code == 403
    settings.LAYERHUB_UPLOAD_MAX_BYTES = 1000
    big = developer.post(
        "/api/v1/images/import/",
        {"archive": _upload(b"x" * 200_000), "team": "alpha"},
        format="multipart",
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "too_large"
    streamed = developer.post(
        "/api/v1/images/import/",
        {"archive": _upload(b"x" * 5000), "team": "alpha"},
        format="multipart",
    )
    assert streamed.status_code == 413  # past the limit as it streamed in
    assert list(uploads.iterdir()) == []
    assert not Job.objects.filter(kind=Job.Kind.IMPORT).exists()
