"""The docker run / docker commit workflow end to end: a Debian-like base image, a shell
command in a container, commit, push to the CNCF registry, and the result read back by skopeo
and umoci; export as docker save and OCI archives read by skopeo."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from pytest_django import Settings

from layerhub.containers import services
from layerhub.containers.models import Container
from layerhub.containers.services import (
    container_commit,
    container_create,
    container_diff,
    container_exec,
    container_lookup,
    container_remove_path,
    container_rm,
    container_write_file,
)
from layerhub.core.store import get_store
from layerhub.engine.errors import (
    Conflict,
    ContainerPathError,
    ImageNotFound,
    InvalidChange,
    RuntimeUnavailable,
)
from layerhub.engine.runtime import ExecResult
from layerhub.engine.runtime.overlay import mounts_under
from layerhub.hosts.calls import host_call
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image
from layerhub.images.services import image_import
from layerhub.images.services.transfer import image_push, image_remove, image_save
from layerhub.jobs.models import Job
from tests.support.busybox import busybox_layer
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, write_layout
from tests.support.registry import SKOPEO_BIN, Registry
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]
BASE = "localhost/base:1"


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


@pytest.fixture
def base(tmp_path: Path) -> Image:
    """The busybox base image, imported from an OCI layout and unpacked."""
    raw = busybox_layer()
    layer = LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )
    image = OciImage([layer])
    layout = write_layout(tmp_path / "base-layout", {BASE: image})
    job = image_import(team=default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert all(c.state == Job.State.SUCCEEDED for c in job.children.all())
    return image_lookup(BASE)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path.relative_to(root)} {st.st_mode} {st.st_size} {st.st_mtime_ns}".encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def skopeo(*args: str) -> str:
    assert SKOPEO_BIN is not None
    result = subprocess.run([SKOPEO_BIN, *args], check=True, capture_output=True, text=True)
    return result.stdout


def job_done(job: Job) -> Job:
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return job


def test_run_commit_push_and_read_back(base: Image, registry: Registry, tmp_path: Path) -> None:
    store = get_store()
    snapshots_before = {p.name: tree_hash(p) for p in store.snapshots.root.iterdir()}
    container = container_create(team=default_team(), image=BASE, name="work")
    assert not any((store.containers / container.container_id / "upper").iterdir())

    result = container_exec(
        container=container,
        argv=["sh", "-c", "echo hello > /root/greeting && rm /etc/os-release && echo done"],
    )
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"done\n", b"")
    failed = container_exec(container=container, argv=["sh", "-c", "echo oops >&2; exit 3"])
    assert (failed.exit_code, failed.stderr) == (3, b"oops\n")

    changes = {(c.kind, c.path) for c in container_diff(container=container)}
    assert {("C", "/root"), ("A", "/root/greeting"), ("D", "/etc/os-release")} <= changes

    job = job_done(
        container_commit(
            container=container_lookup("work"),
            repository=f"{registry.host}/team/committed:1",
            message="greet and forget",
            author="Ada <ada@example.com>",
            changes=['CMD ["cat", "/root/greeting"]', "ENV GREETING=hello"],
        )
    )
    image = job.image
    assert image is not None
    assert image.image_layers.count() == 2
    assert image.config["config"]["Cmd"] == ["cat", "/root/greeting"]
    history = image.config["history"][-1]
    assert (history["comment"], history["author"]) == ("greet and forget", "Ada <ada@example.com>")
    assert "echo oops" in history["created_by"]  # the last command run, as Docker records it
    # the shared snapshots were never written to
    assert {n: tree_hash(store.snapshots.root / n) for n in snapshots_before} == snapshots_before

    pushed = job_done(image_push(team=default_team(), image=f"{registry.host}/team/committed:1"))
    assert {line["status"] for line in pushed.progress} <= {"Pushed", "Layer already exists"}
    ref = f"docker://{registry.host}/team/committed:1"
    inspect = json.loads(skopeo("inspect", "--tls-verify=false", ref))
    assert inspect["Digest"] == image.manifest_digest
    assert len(inspect["Layers"]) == 2
    config = json.loads(skopeo("inspect", "--config", "--tls-verify=false", ref))
    assert config["history"][-1]["comment"] == "greet and forget"
    assert config["history"][-1]["author"] == "Ada <ada@example.com>"
    skopeo("copy", "--quiet", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'oci'}:x")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'oci'}:x", str(tmp_path / "bundle")],
        check=True,
        capture_output=True,
    )
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "root" / "greeting").read_bytes() == b"hello\n"
    assert not (rootfs / "etc" / "os-release").exists()
    assert (rootfs / "bin" / "busybox").read_bytes() == Path("/bin/busybox").read_bytes()
    assert (rootfs / "etc" / "passwd").exists()

    # committing the same writable layer again gives the same layer
    again = job_done(container_commit(container=container))
    assert again.image is not None
    top = [row.layer.digest for row in again.image.image_layers.order_by("position")]
    assert top == [row.layer.digest for row in image.image_layers.order_by("position")]

    for fmt, transport in (("docker", "docker-archive"), ("oci", "oci-archive")):
        archive = tmp_path / f"saved-{fmt}.tar"
        job_done(
            image_save(images=[f"{registry.host}/team/committed:1"], path=str(archive), format=fmt)
        )
        # an OCI layout names the image by its tag (org.opencontainers.image.ref.name)
        target = f"{transport}:{archive}" + (":1" if fmt == "oci" else "")
        saved = json.loads(skopeo("inspect", "--config", target))
        assert saved["rootfs"]["diff_ids"] == image.config["rootfs"]["diff_ids"]
        assert not list(tmp_path.glob(".*.partial"))


def test_file_changes_through_services(base: Image) -> None:
    container = container_create(team=default_team(), image=BASE)
    container_write_file(container=container, path="/etc/motd", data=b"hi\n")
    container_remove_path(container=container, path="/etc/passwd")
    changes = [(c.kind, c.path) for c in container_diff(container=container)]
    assert ("A", "/etc/motd") in changes
    assert ("D", "/etc/passwd") in changes
    with pytest.raises(ContainerPathError):
        container_write_file(container=container, path="/nowhere/file", data=b"x")
    job = job_done(container_commit(container=container, repository="localhost/changed:1"))
    assert job.image is not None
    assert job.image.image_layers.count() == 2


def test_empty_commit_and_bad_changes(base: Image) -> None:
    container = container_create(team=default_team(), image=BASE)
    with pytest.raises(InvalidChange):
        container_commit(container=container, changes=["RUN rm -rf /"])
    job = job_done(container_commit(container=container, changes=["LABEL a=b"]))
    assert job.image is not None
    assert job.image.image_layers.count() == 1
    assert job.image.config["history"][-1]["empty_layer"] is True


def test_names_rm_and_rmi(base: Image) -> None:
    container = container_create(team=default_team(), image=BASE, name="one")
    with pytest.raises(Conflict):
        container_create(team=default_team(), image=BASE, name="one")
    with pytest.raises(Conflict, match="used by container"):
        image_remove(image=BASE)
    upper = get_store().containers / container.container_id
    container_rm(container=container)
    assert not upper.exists()
    assert not Container.objects.exists()
    lines = image_remove(image=BASE)
    assert lines[0] == "Untagged: localhost/base:1"
    assert not Image.objects.exists()
    assert list(get_store().snapshots.root.iterdir()) == []


def _during_prepare(monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], object]) -> None:
    """Run ``meanwhile`` once, right after a create has prepared its writable layer: what
    another request may do between the create's checks and its row."""
    real = host_call
    done: list[bool] = []

    def call(host: str, op: str, **params: Any) -> Any:
        result = real(host, op, **params)
        if op == "container.prepare" and not done:
            done.append(True)
            meanwhile()
        return result

    monkeypatch.setattr(services, "host_call", call)


def test_a_create_racing_rmi_says_the_image_is_gone(
    base: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    _during_prepare(monkeypatch, lambda: image_remove(image=BASE))
    with pytest.raises(ImageNotFound, match="deleted meanwhile"):
        container_create(team=default_team(), image=BASE, name="late")
    assert not Image.objects.exists()
    assert not Container.objects.exists()
    assert list(get_store().containers.iterdir()) == [], "the prepared layer was kept"


def test_a_create_racing_a_create_of_the_same_name_is_a_conflict(
    base: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    first: list[Container] = []
    _during_prepare(
        monkeypatch,
        lambda: first.append(container_create(team=default_team(), image=BASE, name="same")),
    )
    with pytest.raises(Conflict, match="'same' is already in use"):
        container_create(team=default_team(), image=BASE, name="same")
    assert [c.container_id for c in Container.objects.all()] == [first[0].container_id]
    assert [p.name for p in get_store().containers.iterdir()] == [first[0].container_id]


def test_cli_verbs(base: Image, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    call_command("create", BASE, "--name", "cli", stdout=out)
    assert len(out.getvalue().strip()) == 64
    with pytest.raises(SystemExit) as exited:
        call_command("exec", "cli", "--", "sh", "-c", "echo hi; touch /tmp/x; exit 4")
    assert exited.value.code == 4
    assert "hi" in capsys.readouterr().out
    diff = io.StringIO()
    call_command("diff", "cli", stdout=diff)
    assert "A /tmp/x" in diff.getvalue().splitlines()
    commit = io.StringIO()
    call_command(
        "commit", "-m", "msg", "-a", "me", "-c", "ENV X=1", "cli", "localhost/cli:1", stdout=commit
    )
    image_id = commit.getvalue().strip().splitlines()[-1]
    assert image_id.startswith("sha256:")
    history = io.StringIO()
    call_command("history", "localhost/cli:1", stdout=history)
    lines = history.getvalue().splitlines()
    assert lines[0].split()[:2] == ["IMAGE", "CREATED"]
    assert lines[1].startswith(image_id.split(":")[1][:12])
    assert "msg" in lines[1]
    ps = io.StringIO()
    call_command("ps", stdout=ps)
    assert "cli" in ps.getvalue()
    with pytest.raises(CommandError, match="no such container"):
        call_command("diff", "ghost", stdout=io.StringIO())
    call_command("rm", "cli", stdout=io.StringIO())


def test_running_commands_refused_clearly_on_an_oci_form_store(
    settings: Settings, tmp_path: Path, base: Image
) -> None:
    root = tmp_path / "oci-store"
    root.mkdir()
    (root / "store.json").write_text(json.dumps({"version": 2, "whiteouts": "oci"}))
    shutil.copytree(get_store().root / "snapshots", root / "snapshots")
    settings.LAYERHUB_STORE = root
    container = container_create(team=default_team(), image=BASE)
    with pytest.raises(RuntimeUnavailable, match="running commands needs"):
        container_exec(container=container, argv=["true"])
    # files still change without running anything
    container_write_file(container=container, path="/root/note", data=b"x")
    assert ("A", "/root/note") in {(c.kind, c.path) for c in container_diff(container=container)}


def test_a_crashed_exec_does_not_block_the_next(base: Image) -> None:
    container = container_create(team=default_team(), image=BASE)
    # what a worker killed mid-exec leaves behind
    Container.objects.filter(pk=container.pk).update(state=Container.State.RUNNING)
    container.refresh_from_db()
    result = container_exec(container=container, argv=["echo", "again"])
    assert (result.exit_code, result.stdout) == (0, b"again\n")
    container.refresh_from_db()
    assert container.state == Container.State.CREATED
    assert container.last_exit_code == 0


# -- interrupted exec, one lock per container ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _processes(cmdline: bytes) -> set[int]:
    """The processes running exactly ``cmdline`` (NUL-separated, as /proc has it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes() == cmdline:
                    found.add(int(entry.name))
    return found


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")]
)
def test_a_signalled_exec_stops_the_command_and_leaves_no_mount(
    base: Image, settings: Settings, signum: int, code: int, name: str
) -> None:
    store = get_store()
    container = container_create(team=default_team(), image=BASE, name="sleeper")
    upper = store.containers / container.container_id / "upper"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "LAYERHUB_STORE": str(settings.LAYERHUB_STORE),
    }
    sleeping = b"sleep\x0031\x00"
    before = _processes(sleeping)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "exec", "sleeper", "--",
         "sh", "-c", "echo started > /root/started; exec sleep 31"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_for(lambda: _processes(sleeping) - before, 60, "the command to start")
        scratch = next(store.tmp.glob("exec-*"))
        assert mounts_under(store.root) == [str(scratch / "merged")]
        in_container = _processes(sleeping) - before
        started = time.monotonic()
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert time.monotonic() - started < 15
    assert proc.returncode == code
    lines = stderr.decode().strip().splitlines()
    assert len(lines) == 1, stderr.decode()
    assert name in lines[0]
    assert "Traceback" not in stderr.decode()
    # the command, runc and the mount are gone, and so is the scratch directory
    assert all(not Path(f"/proc/{pid}").exists() for pid in in_container)
    assert mounts_under(store.root) == []
    assert not scratch.exists()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            assert str(scratch).encode() not in (entry / "cmdline").read_bytes()
    # the container is whole: its change is there, the image's files still show through
    assert (upper / "root" / "started").read_bytes() == b"started\n"
    changes = {(c.kind, c.path) for c in container_diff(container=container)}
    assert ("A", "/root/started") in changes
    assert not any(kind == "D" for kind, _ in changes)
    get_store().sweep_tmp()  # what the next worker does on start
    result = container_exec(container=container, argv=["cat", "/etc/os-release", "/root/started"])
    assert result.exit_code == 0
    assert result.stdout.endswith(b"started\n")
    container.refresh_from_db()
    assert container.state == Container.State.CREATED


def _exec_in_thread(container: Container, argv: list[str]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(container_exec(container=container, argv=argv))
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_second_exec_is_refused_and_leaves_the_state_alone(base: Image) -> None:
    store = get_store()
    container = container_create(team=default_team(), image=BASE, name="busy")
    upper = store.containers / container.container_id / "upper"
    thread, outcome = _exec_in_thread(
        container, ["sh", "-c", "touch /root/started; sleep 2; echo first"]
    )
    try:
        _wait_for(lambda: (upper / "root" / "started").exists(), 60, "the first command")
        container.refresh_from_db()
        assert container.state == Container.State.RUNNING
        with pytest.raises(Conflict, match="container busy is busy: a command is running"):
            container_exec(container=container, argv=["echo", "second"])
        container.refresh_from_db()
        assert container.state == Container.State.RUNNING  # still the first command's
        assert container.last_command == []
        # file changes and removal wait their turn too
        with pytest.raises(Conflict, match="is busy"):
            container_write_file(container=container, path="/root/note", data=b"x")
        with pytest.raises(Conflict, match="is busy"):
            container_rm(container=container)
        assert not (upper / "root" / "note").exists()
    finally:
        thread.join(60)
    assert isinstance(outcome[0], ExecResult), outcome
    assert outcome[0].stdout == b"first\n"
    container.refresh_from_db()
    assert container.state == Container.State.CREATED
    assert container.last_command[-1].endswith("echo first")


def test_a_commit_waits_for_the_command_writing(base: Image) -> None:
    store = get_store()
    container = container_create(team=default_team(), image=BASE, name="writer")
    upper = store.containers / container.container_id / "upper"
    script = (
        "touch /root/started; for i in $(seq 1 20); do echo line$i >> /root/log; sleep 0.1; done"
    )
    thread, outcome = _exec_in_thread(container, ["sh", "-c", script])
    try:
        _wait_for(lambda: (upper / "root" / "started").exists(), 60, "the command to start")
        job = job_done(container_commit(container=container, repository="localhost/writer:1"))
    finally:
        thread.join(60)
    assert isinstance(outcome[0], ExecResult), outcome
    assert job.image is not None
    top = job.image.image_layers.select_related("layer").order_by("-position").first()
    assert top is not None
    captured = store.snapshots.path(top.layer.chain_id) / "root" / "log"
    assert captured.read_text().splitlines() == [f"line{i}" for i in range(1, 21)]
