"""The container runtime: commands run with runc on a kernel overlay mount of real snapshots.

The image is Debian's static busybox in one layer (tests/support/busybox.py), unpacked into a
store that keeps overlay-form whiteouts. Running needs root and runc: without them these tests
skip (and fail in CI, which has both). The config and refusal tests run anywhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import signal
import stat
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layerhub.engine.diff import write_diff_tar
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.errors import CommandTimeout, HostFault, LayerhubError, RuntimeUnavailable
from layerhub.engine.runtime import ExecResult, run_in_container, runtime_unavailable_reason
from layerhub.engine.runtime import run as run_module
from layerhub.engine.runtime.bundle import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH,
    User,
    bundle_config,
    process_env,
    resolve_user,
    working_dir,
)
from layerhub.engine.runtime.overlay import unmount as overlay_unmount
from layerhub.engine.runtime.signals import Interrupted, shielded, signals_raise
from layerhub.engine.store import Store
from layerhub.engine.union import UnionView
from layerhub.engine.whiteouts import OciWhiteouts, OverlayWhiteouts
from tests.support.busybox import busybox_layer, require_busybox
from tests.support.oci import layer_tar
from tests.support.peers import skip_or_fail

OPAQUE_XATTR = "trusted.overlay.opaque"


def mount_points() -> list[str]:
    """Every mount point of this process, read straight from the kernel."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            field = line.split()[4]
            for code in ("\\040", "\\011", "\\012", "\\134"):
                field = field.replace(code, chr(int(code[1:], 8)))
            points.append(field)
    return points


def mounts_below(path: Path) -> list[str]:
    base = os.path.realpath(path)
    return [p for p in mount_points() if p == base or p.startswith(base + "/")]


def tree_digest(root: Path) -> str:
    """Paths, types, modes, owners and contents of a tree: any change changes it."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(
                f"{os.path.relpath(path, root)} {st.st_mode} {st.st_uid} {st.st_gid}\n".encode()
            )
            if stat.S_ISREG(st.st_mode):
                h.update(Path(path).read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return h.hexdigest()


def upper_paths(upper: Path) -> set[str]:
    return {
        os.path.relpath(os.path.join(d, n), upper)
        for d, dirs, files in os.walk(upper)
        for n in dirs + files
    }


def processes_running(needle: bytes) -> list[int]:
    """Pids whose command line is exactly ``needle`` (NUL-separated argv)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.rstrip(b"\0") == needle:
                found.append(int(entry))
    return found


def runc_cgroups() -> set[str]:
    root = Path("/sys/fs/cgroup")
    return {str(p) for p in [*root.glob("layerhub-*"), *root.glob("*/layerhub-*")]}


def require_runtime() -> None:
    reason = runtime_unavailable_reason(OverlayWhiteouts())
    if reason:
        skip_or_fail(reason)


@dataclass
class Image:
    store: Store
    lowers: list[Path]


@dataclass
class Container:
    """A writable layer over ``image`` and a fresh scratch directory for each run."""

    image: Image
    root: Path
    scratch_parent: Path
    config: dict[str, Any]

    @property
    def upper(self) -> Path:
        return self.root / "upper"

    def scratch(self) -> Path:
        path = self.scratch_parent / f"exec-{secrets.token_hex(4)}"
        path.mkdir()
        return path

    def run(self, *argv: str, scratch: Path | None = None, **kwargs: Any) -> ExecResult:
        """Run a command; check it left its scratch directory empty and no mount behind."""
        scratch = scratch or self.scratch()
        try:
            return run_in_container(
                lowers=self.image.lowers,
                upper=self.upper,
                work=self.root / "work",
                scratch=scratch,
                image_config=kwargs.pop("image_config", self.config),
                argv=argv,
                whiteouts=self.image.store.whiteouts,
                **kwargs,
            )
        finally:
            assert mounts_below(scratch) == []
            assert os.listdir(scratch) == []


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    """The busybox base unpacked once into an overlay-form store."""
    require_busybox()
    require_runtime()
    store = Store(tmp_path_factory.mktemp("runtime-store"), whiteouts="overlay")
    layer = busybox_layer()
    diff_id = sha256_bytes(layer)
    snapshot = store.snapshots.unpack(diff_id, io.BytesIO(layer), diff_id=diff_id, durable=False)
    return Image(store, [snapshot.path])


@pytest.fixture
def container(image: Image, tmp_path: Path) -> Container:
    root = image.store.containers / secrets.token_hex(32)
    (root / "upper").mkdir(parents=True)
    return Container(image, root, tmp_path, {"Env": ["PATH=" + DEFAULT_PATH]})


# -- running commands ------------------------------------------------------------------------


def test_stdout_stderr_and_exit_code_are_captured(container: Container) -> None:
    result = container.run("sh", "-c", "echo out; echo err >&2; cat /etc/os-release")
    assert result.exit_code == 0
    assert result.stdout == b'out\nID=debian-like\nNAME="layerhub test base"\n'
    assert result.stderr == b"err\n"
    assert 0 < result.duration < 30


def test_non_zero_exit_code_is_a_result(container: Container) -> None:
    assert container.run("sh", "-c", "exit 7").exit_code == 7
    failed = container.run("cat", "/no/such/file")
    assert failed.exit_code == 1
    assert b"No such file or directory" in failed.stderr


def test_command_not_found_or_not_executable_exits_like_docker(container: Container) -> None:
    missing = container.run("no-such-command")
    assert missing.exit_code == 127
    assert b"executable file not found" in missing.stderr
    assert container.run("/etc/os-release").exit_code == 126


def test_changes_land_in_upper_in_overlay_form_and_lowers_stay(container: Container) -> None:
    (snapshot,) = container.image.lowers
    before = tree_digest(snapshot)
    result = container.run("sh", "-c", "echo hi > /root/new && rm /etc/os-release")
    assert result.exit_code == 0, result.stderr
    upper = container.upper
    assert (upper / "root" / "new").read_bytes() == b"hi\n"
    st = os.lstat(upper / "etc" / "os-release")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(0, 0)
    # nothing else: runc's mount points (/proc, /dev, /etc/hosts...) come from the init layer
    assert upper_paths(upper) == {"root", "root/new", "etc", "etc/os-release"}
    assert tree_digest(snapshot) == before
    # the union view the diff and commit read sees exactly the command's changes
    view = UnionView([snapshot, upper], container.image.store.whiteouts)
    assert view.read_bytes("/root/new") == b"hi\n"
    assert not view.exists("/etc/os-release")
    assert view.exists("/etc/passwd")
    # and the layer a commit would write holds just that, with no overlayfs bookkeeping
    buf = io.BytesIO()
    write_diff_tar(upper, container.image.store.whiteouts, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["etc", "etc/.wh.os-release", "root", "root/new"]
    assert not [key for m in members for key in m.pax_headers if "overlay" in key]


def test_a_replaced_directory_is_opaque(container: Container) -> None:
    result = container.run("sh", "-c", "rm -rf /home && mkdir /home && touch /home/x")
    assert result.exit_code == 0, result.stderr
    assert os.getxattr(container.upper / "home", OPAQUE_XATTR) == b"y"
    assert os.listdir(container.upper / "home") == ["x"]
    assert OverlayWhiteouts().is_opaque(container.upper / "home")


def test_a_later_command_sees_earlier_changes(container: Container) -> None:
    container.run("sh", "-c", "echo one > /tmp/state")
    assert container.run("cat", "/tmp/state").stdout == b"one\n"


def test_env_workdir_and_hostname_from_the_image_config(container: Container) -> None:
    config = {"Env": ["GREETING=hello", "KEEP=kept", "PATH=/bin:/usr/bin"], "WorkingDir": "/tmp"}
    result = container.run(
        "sh",
        "-c",
        'pwd; echo "$GREETING $KEEP $EXTRA"; echo "$PATH"; echo "$HOME"; hostname; '
        "cat /etc/hostname",
        image_config=config,
        env={"GREETING": "over", "EXTRA": "1"},
    )
    short_id = container.root.name[:12]
    assert result.stdout.decode().splitlines() == [
        "/tmp",
        "over kept 1",
        "/bin:/usr/bin",
        "/root",
        short_id,
        short_id,
    ]


def test_default_path_and_workdir(container: Container) -> None:
    result = container.run("sh", "-c", 'pwd; echo "$PATH"', image_config={})
    assert result.stdout.decode().splitlines() == ["/", DEFAULT_PATH]


def test_a_missing_workdir_is_created_as_docker_does(container: Container) -> None:
    result = container.run("pwd", image_config={"WorkingDir": "/srv/app"})
    assert result.stdout == b"/srv/app\n"
    assert (container.upper / "srv" / "app").is_dir()


def test_numeric_user(container: Container) -> None:
    result = container.run("sh", "-c", "id -u; id -g", image_config={"User": "1234:5678"})
    assert result.stdout == b"1234\n5678\n"


def test_named_user_from_the_image_passwd_and_group(container: Container) -> None:
    result = container.run("id", image_config={"User": "app"})
    assert result.stdout.startswith(b"uid=1000(app) gid=1000(app) groups=")
    assert b"50(staff)" in result.stdout
    # a non-root user holds no capabilities: root's home is closed to it
    denied = container.run("touch", "/root/x", image_config={"User": "app"})
    assert denied.exit_code != 0
    assert not (container.upper / "root" / "x").exists()


def test_unknown_user_is_refused(container: Container) -> None:
    with pytest.raises(LayerhubError, match="unable to find user ghost"):
        container.run("id", image_config={"User": "ghost"})


def test_output_is_cut_at_the_limit(container: Container) -> None:
    result = container.run(
        "sh", "-c", "yes | head -c 300000; yes e | head -c 300000 >&2", output_limit=1000
    )
    assert result.exit_code == 0
    assert result.stdout == b"y\n" * 500
    assert result.stderr == b"e\n" * 500


def test_timeout_kills_and_leaves_nothing(container: Container) -> None:
    cgroups_before = runc_cgroups()
    scratch = container.scratch()
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 2 s and was killed"):
        container.run("sleep", "4321", timeout=2, scratch=scratch)
    assert time.monotonic() - start < 2 + 5
    assert mounts_below(scratch) == []
    assert not (scratch / "state").exists()
    assert processes_running(b"sleep\x004321") == []
    assert runc_cgroups() == cgroups_before


def test_no_network_unless_asked(container: Container) -> None:
    isolated = container.run("ls", "/sys/class/net")
    assert isolated.stdout.split() == [b"lo"]
    links = container.run("ip", "-o", "link")
    assert [line.split(b":")[1].strip() for line in links.stdout.splitlines()] == [b"lo"]
    shared = container.run("ls", "/sys/class/net", network=True)
    assert sorted(shared.stdout.decode().split()) == sorted(os.listdir("/sys/class/net"))


def test_one_command_at_a_time_per_container(container: Container) -> None:
    first_scratch = container.scratch()
    results: list[ExecResult] = []
    runner = threading.Thread(
        target=lambda: results.append(container.run("sleep", "2", scratch=first_scratch))
    )
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while not mounts_below(first_scratch) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(LayerhubError, match="another command is running"):
            container.run("true")
    finally:
        runner.join()
    assert results[0].exit_code == 0


def test_no_mount_left_after_an_exception_before_runc(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**kwargs: Any) -> dict[str, Any]:
        assert mounts_below(kwargs["rootfs"]) != []  # the overlay was mounted by then
        raise RuntimeError("boom")

    monkeypatch.setattr(run_module, "bundle_config", broken)
    with pytest.raises(RuntimeError, match="boom"):
        container.run("true")


def test_no_mount_or_process_left_after_an_exception_while_running(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> None:
        time.sleep(0.5)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "_collect", interrupted)
    scratch = container.scratch()
    with pytest.raises(KeyboardInterrupt):
        container.run("sleep", "4322", scratch=scratch)
    assert processes_running(b"sleep\x004322") == []


def test_nothing_left_after_an_exception_while_runc_starts(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt  # at once: runc has not created the container yet

    monkeypatch.setattr(run_module, "_collect", interrupted)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        container.run("sleep", "4323")
    assert time.monotonic() - start < 5
    time.sleep(0.5)  # had anything escaped, it would be running by now
    assert processes_running(b"sleep\x004323") == []


def test_many_layers_past_one_page_of_mount_options(tmp_path: Path) -> None:
    require_busybox()
    require_runtime()
    store = Store(tmp_path / ("long-store-path-" * 6) / "store", whiteouts="overlay")
    layers = [busybox_layer()] + [
        layer_tar({f"layers/{i:03}": f"{i}\n".encode()}) for i in range(80)
    ]
    diff_ids = [sha256_bytes(layer) for layer in layers]
    lowers = [
        store.snapshots.unpack(chain, io.BytesIO(layer), durable=False).path
        for chain, layer in zip(chain_ids(diff_ids), layers, strict=True)
    ]
    assert sum(len(str(p)) + 1 for p in lowers) > os.sysconf("SC_PAGE_SIZE")
    container = Container(Image(store, lowers), store.containers / "c", tmp_path, {})
    container.upper.mkdir(parents=True)
    result = container.run("sh", "-c", "cat /layers/*")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b"".join(f"{i}\n".encode() for i in range(80))


# -- refusals and configuration (no root needed) ---------------------------------------------


def test_an_oci_form_store_is_refused_clearly(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", whiteouts="oci")
    reason = runtime_unavailable_reason(store.whiteouts)
    assert reason is not None
    assert reason.startswith("running commands needs root, runc and a store that keeps")
    assert "this store: oci" in reason
    (tmp_path / "upper").mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RuntimeUnavailable) as refused:
        run_in_container(
            lowers=[],
            upper=tmp_path / "upper",
            work=tmp_path / "work",
            scratch=scratch,
            image_config={},
            argv=["true"],
            whiteouts=store.whiteouts,
        )
    assert str(refused.value) == reason
    assert os.listdir(scratch) == []


def _config(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "rootfs": "/scratch/merged",
        "argv": ["sh", "-c", "true"],
        "env": ["PATH=" + DEFAULT_PATH],
        "cwd": "/",
        "user": User(0, 0, (), "/root"),
        "hostname": "0123456789ab",
        "network": False,
        "bind_files": {"/etc/hosts": "/scratch/files/hosts"},
    }
    args.update(overrides)
    return bundle_config(**args)


def test_config_json_defaults() -> None:
    config = _config()
    process = config["process"]
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert process["capabilities"]["effective"] == list(DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["bounding"]
    assert config["root"] == {"path": "/scratch/merged", "readonly": False}
    assert config["hostname"] == "0123456789ab"
    assert [ns["type"] for ns in config["linux"]["namespaces"]] == [
        "pid",
        "ipc",
        "uts",
        "mount",
        "network",
    ]
    mounts = {m["destination"]: m for m in config["mounts"]}
    assert set(mounts) == {
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/etc/hosts",
    }
    assert "ro" in mounts["/sys"]["options"]
    assert mounts["/dev"]["type"] == "tmpfs"
    assert "/proc/kcore" in config["linux"]["maskedPaths"]


def test_config_json_network_and_non_root_user() -> None:
    config = _config(network=True, user=User(1000, 1000, (50,), "/home/app"))
    assert "network" not in [ns["type"] for ns in config["linux"]["namespaces"]]
    assert config["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [50]}
    caps = config["process"]["capabilities"]
    assert caps["effective"] == caps["permitted"] == []
    assert caps["bounding"] == list(DEFAULT_CAPABILITIES)


@pytest.fixture
def passwd_view(tmp_path: Path) -> UnionView:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n"
    )
    (layer / "etc" / "group").write_text("root:x:0:\nstaff:x:50:app,other\ndev:x:1001:\n")
    return UnionView([layer], OciWhiteouts())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", User(0, 0, (), "/root")),
        ("root", User(0, 0, (), "/root")),
        ("app", User(1000, 1001, (50,), "/home/app")),
        ("1000", User(1000, 1001, (50,), "/home/app")),
        ("app:staff", User(1000, 50, (), "/home/app")),
        ("4242", User(4242, 0, (), "/")),
        ("4242:7", User(4242, 7, (), "/")),
    ],
)
def test_resolve_user(passwd_view: UnionView, spec: str, expected: User) -> None:
    assert resolve_user(spec, passwd_view) == expected


def test_resolve_user_refuses_unknown_names(passwd_view: UnionView) -> None:
    with pytest.raises(LayerhubError, match="unable to find user ghost"):
        resolve_user("ghost", passwd_view)
    with pytest.raises(LayerhubError, match="unable to find group ghosts"):
        resolve_user("app:ghosts", passwd_view)


def test_process_env_and_working_dir() -> None:
    env: Mapping[str, str] = {"B": "run", "C": "3"}
    assert process_env(["A=1", "B=image"], env, hostname="h", home="/root") == [
        "PATH=" + DEFAULT_PATH,
        "HOSTNAME=h",
        "A=1",
        "B=run",
        "C=3",
        "HOME=/root",
    ]
    with pytest.raises(LayerhubError):
        process_env([], {"A=B": "x"}, hostname="h", home="/")
    assert working_dir({}) == "/"
    assert working_dir({"WorkingDir": "/srv/app/"}) == "/srv/app"
    assert working_dir({"WorkingDir": "srv"}) == "/srv"


def test_sigterm_while_running_raises_after_clean_up(container: Container) -> None:
    scratch = container.scratch()
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))

    def run() -> None:
        with signals_raise():
            timer.start()
            container.run("sleep", "4324", scratch=scratch)

    start = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        run()
    timer.join()
    assert caught.value.exit_code == 143
    assert time.monotonic() - start < 1 + 10
    assert mounts_below(scratch) == []
    assert not (scratch / "state").exists()
    assert processes_running(b"sleep\x004324") == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers put back


def test_a_signal_during_clean_up_waits_for_it() -> None:
    finished: list[str] = []

    def clean_up_then_more() -> None:
        with signals_raise():
            with shielded():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run: it only took note
                os.kill(os.getpid(), signal.SIGINT)  # a second one changes nothing
                finished.append("clean-up")
            finished.append("not reached")

    with pytest.raises(Interrupted) as caught:
        clean_up_then_more()
    assert finished == ["clean-up"]
    assert caught.value.exit_code == 130


def test_an_overlay_that_will_not_unmount_is_a_host_fault_not_a_user_error(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the host's fault: reported as a bug (HostFault), never blamed on the command or image
    real_unmount = overlay_unmount
    monkeypatch.setattr(run_module, "unmount", lambda path: None)
    scratch = container.scratch()
    with pytest.raises(HostFault, match="could not unmount") as caught:
        run_in_container(
            lowers=container.image.lowers,
            upper=container.upper,
            work=container.root / "work",
            scratch=scratch,
            image_config=container.config,
            argv=["true"],
            whiteouts=container.image.store.whiteouts,
        )
    assert not isinstance(caught.value, LayerhubError)
    for path in mounts_below(scratch):
        real_unmount(Path(path))
    assert mounts_below(scratch) == []
