"""Import (docker save archives, OCI layouts) and the pull, images, import and login commands."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.images.models import Image, Layer, RegistryCredential, Tag
from layerhub.images.services import image_import, image_pull
from layerhub.jobs.models import Job
from tests.registry.conftest import Seed
from tests.support.registry import SKOPEO_BIN, Registry
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def skopeo(*args: str) -> None:
    assert SKOPEO_BIN is not None
    subprocess.run([SKOPEO_BIN, "copy", "--quiet", "--src-tls-verify=false", *args], check=True)


def snapshot_names() -> set[str]:
    return {p.name for p in get_store().snapshots.root.iterdir()}


def layer_chains(image: Image) -> list[str]:
    return [row.layer.chain_id for row in image.image_layers.order_by("position")]


def test_docker_save_archive_gives_the_pulled_image(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    archive = tmp_path / "other.tar"
    skopeo(f"docker://{registry.host}/team/other:other", f"docker-archive:{archive}:team/other:1")
    job = image_import(team=default_team(), path=str(archive))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    imported = job.image
    assert imported is not None
    assert all(child.state == Job.State.SUCCEEDED for child in job.children.all())
    assert Tag.objects.get(repository__name="team/other", name="1").image == imported
    assert imported.repositories.get().registry == "docker.io"
    snapshots_after_import = snapshot_names()
    pulled = image_pull(team=default_team(), reference=f"{registry.host}/team/other:other")
    pulled.refresh_from_db()
    assert pulled.image is not None
    # the same image ID and the same layers and snapshots, under their own manifests
    assert pulled.image.config_digest == imported.config_digest
    assert layer_chains(pulled.image) == layer_chains(imported)
    assert snapshot_names() == snapshots_after_import
    assert Layer.objects.count() == 2


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_oci_layout_gives_the_pulled_image(
    registry: Registry, seed: Seed, tmp_path: Path, form: str
) -> None:
    layout = tmp_path / "layout"
    skopeo(f"docker://{registry.host}/team/app:v1", f"oci:{layout}:{registry.host}/team/app:v1")
    source = layout
    if form == "tar":
        source = tmp_path / "layout.tar"
        with tarfile.open(source, "w") as tf:
            tf.add(layout, arcname=".")
    job = image_import(team=default_team(), path=str(source))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    assert job.image.manifest_digest == seed.app_image.manifest.digest
    tag = Tag.objects.get(repository__registry=registry.host, repository__name="team/app")
    assert tag.image == job.image
    pulled = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    pulled.refresh_from_db()
    assert pulled.image == job.image  # the very same image row
    assert {line["status"] for line in pulled.progress} == {"Already exists"}


def test_import_of_something_else_fails_clearly(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tf:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    job = image_import(team=default_team(), path=str(bogus))
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "neither a docker save archive" in job.error
    with pytest.raises(CommandError, match="no such file"):
        call_command("import", str(tmp_path / "missing.tar"))


def test_import_of_a_layout_with_a_corrupt_blob_keeps_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    skopeo(f"docker://{registry.host}/team/other:other", f"oci:{layout}:x")
    blobs = sorted((layout / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    biggest = blobs[-1]
    biggest.write_bytes(bytes(biggest.stat().st_size))
    job = image_import(team=default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "digest mismatch" in job.error
    assert not Image.objects.exists()
    assert list(get_store().tmp.iterdir()) == []
    assert not get_store().blobs.has("sha256:" + biggest.name)


def test_pull_and_images_commands(registry: Registry, seed: Seed) -> None:
    out = io.StringIO()
    call_command("pull", f"{registry.host}/team/app:v1", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    base = seed.base.digest.split(":")[1][:12]
    assert text.splitlines()[0] == "v1: Pulling from team/app"
    assert f"{base}: Download complete" in text
    assert f"{base}: Pull complete" in text
    assert f"Digest: {seed.app_image.manifest.digest}" in text
    assert f"Status: Downloaded newer image for {registry.host}/team/app:v1" in text
    again = io.StringIO()
    call_command("pull", f"{registry.host}/team/app:v1", stdout=again, stderr=io.StringIO())
    assert f"{base}: Already exists" in again.getvalue()
    assert "Status: Image is up to date" in again.getvalue()
    listing = io.StringIO()
    call_command("images", stdout=listing)
    header, row = listing.getvalue().splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    image_id = seed.app_image.config.digest.split(":")[1][:12]
    assert row.split()[:3] == [f"{registry.host}/team/app", "v1", image_id]
    # uncompressed bytes, as docker images counts: 700,026 in the base, 21 in the app layer
    assert row.split()[-1] == "700kB"


def test_pull_command_errors(registry: Registry) -> None:
    with pytest.raises(CommandError, match="invalid reference"):
        call_command("pull", "Debian", stdout=io.StringIO(), stderr=io.StringIO())
    with pytest.raises(CommandError, match="not found"):
        call_command(
            "pull", f"{registry.host}/team/app:missing", stdout=io.StringIO(), stderr=io.StringIO()
        )


def login(host: str, password: str) -> str:
    out = io.StringIO()
    saved = sys.stdin
    sys.stdin = io.StringIO(password + "\n")
    try:
        call_command("login", host, "-u", "tester", "--password-stdin", stdout=out)
    finally:
        sys.stdin = saved
    return out.getvalue()


def test_login_command(basic_registry: Registry) -> None:
    with pytest.raises(CommandError, match=r"denied|refused"):
        login(basic_registry.host, "nope")
    assert not RegistryCredential.objects.exists()
    assert login(basic_registry.host, basic_registry.password or "").strip() == "Login Succeeded"
    cred = RegistryCredential.objects.get(host=basic_registry.host)
    assert cred.get_password() == basic_registry.password
    job = image_pull(team=default_team(), reference=f"{basic_registry.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error


# -- save -o ------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


@pytest.mark.parametrize("kind", ["device", "directory", "symlink", "fifo"])
def test_save_never_replaces_what_is_not_a_regular_file(
    registry: Registry, tmp_path: Path, kind: str
) -> None:
    reference = f"{registry.host}/team/app:v1"
    image_pull(team=default_team(), reference=reference)
    target = tmp_path / "out.tar"
    elsewhere = tmp_path / "precious"
    elsewhere.write_bytes(b"keep me")
    if kind == "device":
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    elif kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.symlink_to(elsewhere)
    before = os.lstat(target)
    with pytest.raises(CommandError, match="not a regular file"):
        call_command("save", reference, "-o", str(target), stdout=io.StringIO())
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    assert elsewhere.read_bytes() == b"keep me"
    assert not Job.objects.filter(kind=Job.Kind.EXPORT).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tar", "precious"]


@pytest.mark.parametrize("form", ["docker", "oci"])
def test_save_to_standard_output_is_the_file_byte_for_byte(
    registry: Registry, tmp_path: Path, settings: Settings, form: str
) -> None:
    reference = f"{registry.host}/team/app:v1"
    image_pull(team=default_team(), reference=reference)
    as_file = tmp_path / "file.tar"
    call_command("save", reference, "--format", form, "-o", str(as_file), stdout=io.StringIO())
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
    }
    streamed = subprocess.run(
        [sys.executable, "manage.py", "save", reference, "--format", form, "-o", "-"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert streamed.returncode == 0, streamed.stderr.decode()
    assert streamed.stdout == as_file.read_bytes()
    assert streamed.stderr == b""
    assert not Job.objects.filter(kind=Job.Kind.EXPORT).exclude(reference=str(as_file)).exists()


def test_save_to_a_reader_that_goes_away_ends_quietly(
    registry: Registry, settings: Settings
) -> None:
    reference = f"{registry.host}/team/app:v1"
    image_pull(team=default_team(), reference=reference)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
    }
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "save", reference, "-o", "-"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.read(512)  # the archive's first header, then the reader is gone
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert b"Traceback" not in stderr
