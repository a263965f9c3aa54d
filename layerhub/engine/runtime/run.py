"""Run one command in a container with runc, as ``docker exec`` does without ``-i`` or ``-t``.

One run, all inside the caller's ``scratch`` directory::

    scratch/init/      mount points the image may lack (/proc, /dev, /etc/hosts...), the bottom
                       layer: so runc never creates them in the container's writable layer
    scratch/files/     /etc/hostname, /etc/hosts (and /etc/resolv.conf with network) bound in
    scratch/merged/    the kernel overlay mount: image snapshots, writable layer on top
    scratch/links/     short symlinks to the layers, when their paths pass one page of options
    scratch/bundle/    config.json
    scratch/state/     runc's --root (its state, gone once the container is deleted)
    scratch/runc.log   runc's own messages, kept apart from the command's stderr

Whatever happens (a timeout, an error, an interrupt), the container is killed and deleted, the
overlay unmounted (lazily as the last resort) and all of the above removed: the caller's
``scratch`` is never left holding a mount it could delete through.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO, Any

from ..errors import CommandTimeout, HostFault, LayerhubError, RuntimeUnavailable
from ..fsutil import remove_path
from ..union import UnionView
from ..whiteouts import WhiteoutFormat
from .bundle import (
    DEFAULT_PATH,
    MOUNT_POINT_DIRS,
    bundle_config,
    process_env,
    resolve_user,
    working_dir,
)
from .overlay import mount_overlay, mounts_under, overlay_probe, unmount
from .signals import shielded

RUNC_PATHS = ("/usr/sbin/runc", "/usr/bin/runc", "/usr/local/sbin/runc", "/usr/local/bin/runc")
REQUIREMENT = "running commands needs root, runc and a store that keeps whiteouts in overlay form"
KILL_GRACE = 10.0  # seconds for a killed container to go before runc itself is killed
_READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class ExecResult:
    """What a finished command left: its exit code, its output (each stream cut at the
    output limit) and how long it ran, in seconds. A non-zero exit code is a result too."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float


@cache
def find_runc() -> str | None:
    """The runc binary: on PATH, or where Debian and upstream install it (a worker's PATH may
    lack the sbin directories)."""
    found = shutil.which("runc")
    if found:
        return found
    return next((p for p in RUNC_PATHS if os.access(p, os.X_OK)), None)


@cache
def _host_problems() -> tuple[str, ...]:
    problems = []
    euid = os.geteuid()
    if euid != 0:
        problems.append(f"this process runs as uid {euid}, not root")
    runc = find_runc()
    if runc is None:
        problems.append("runc is not installed: apt-get install runc")
    else:
        try:
            subprocess.run([runc, "--version"], capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{runc} does not run ({exc})")
    if euid == 0:
        reason, _ = overlay_probe()
        if reason:
            problems.append(reason)
    return tuple(problems)


def runtime_unavailable_reason(store_whiteouts: WhiteoutFormat) -> str | None:
    """None when this host can run commands in containers of a store keeping whiteouts in
    ``store_whiteouts``' form; else one sentence saying what is missing.

    The host is probed once per process (root, runc, a test overlay mount)."""
    problems = list(_host_problems())
    if store_whiteouts.name != "overlay":
        problems.append(f"this store: {store_whiteouts.name}")
    return f"{REQUIREMENT} ({'; '.join(problems)})" if problems else None


def run_in_container(
    *,
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    scratch: Path,
    image_config: Mapping[str, Any],
    argv: Sequence[str],
    timeout: float = 60.0,
    network: bool = False,
    env: Mapping[str, str] | None = None,
    output_limit: int = 1 << 20,
    whiteouts: WhiteoutFormat,
    hostname: str | None = None,
) -> ExecResult:
    """Run ``argv`` in a container: the writable ``upper`` over the snapshots ``lowers``
    (bottom first), with the image config's Env, WorkingDir and User, and wait for it.

    What the command changes lands in ``upper`` in overlayfs' form, which is what the
    container's diff and commit read. No network but loopback unless ``network``; ``env`` is
    added over the image's Env like ``docker exec -e``; stdin is /dev/null; each of stdout and
    stderr is kept up to ``output_limit`` bytes. ``hostname`` defaults to the first 12
    characters of the container's ID (``upper``'s parent directory name) as Docker shows it.
    ``scratch`` is a directory for this run alone; all this run puts there is removed again.

    Raises RuntimeUnavailable when this host cannot run commands (it says why),
    CommandTimeout when the command ran past ``timeout`` seconds (it has been killed), and
    LayerhubError for a command or user the container cannot start. A command not found
    returns exit code 127, one that cannot be executed 126, as with Docker.
    """
    reason = runtime_unavailable_reason(whiteouts)
    if reason:
        raise RuntimeUnavailable(reason)
    args = [str(a) for a in argv]
    if not args or not args[0]:
        raise LayerhubError("no command to run")
    if any("\0" in a for a in args):
        raise LayerhubError("a command argument holds a NUL byte")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    lower_dirs = [Path(p) for p in lowers]
    for path in [*lower_dirs, Path(upper)]:
        if not path.is_dir():
            raise ValueError(f"{path} is not a directory")
    Path(work).mkdir(exist_ok=True)
    if os.stat(work).st_dev != os.stat(upper).st_dev:
        raise ValueError(f"{work} must be on the same filesystem as {upper}")
    if hostname is None:
        hostname = _default_hostname(Path(upper))

    view = UnionView([*lower_dirs, Path(upper)], whiteouts)
    user = resolve_user(str(image_config.get("User") or ""), view)
    process_environment = process_env(
        [str(item) for item in image_config.get("Env") or []],
        env or {},
        hostname=hostname,
        home=user.home,
    )
    with _exclusive(Path(upper)), _Scratch(Path(scratch)) as space:
        bind_files = space.make_init(hostname=hostname, network=network)
        merged = space.make("merged")
        space.mounted = merged  # from here on, leaving unmounts it (a no-op if never mounted)
        try:
            with shielded():  # a mount made after an interrupt had unmounted would be left
                mount_overlay(
                    [space.root / "init", *lower_dirs],
                    Path(upper),
                    Path(work),
                    merged,
                    links=space.reserve("links"),
                    options=overlay_probe()[1],
                )
        except OSError as exc:
            raise RuntimeUnavailable(
                f"could not mount the container's filesystem with overlayfs ({exc.strerror}):"
                " the store's filesystem may not take an overlay upper directory"
            ) from None
        except OverflowError as exc:
            raise RuntimeUnavailable(f"cannot run commands in this image: {exc}") from None
        config = bundle_config(
            rootfs=os.fspath(merged),
            argv=args,
            env=process_environment,
            cwd=working_dir(image_config),
            user=user,
            hostname=hostname,
            network=network,
            bind_files=bind_files,
        )
        bundle = space.make("bundle")
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return _Runc(space).run(args, bundle, timeout, output_limit)


def _default_hostname(upper: Path) -> str:
    name = upper.parent.name
    if re.fullmatch(r"[0-9a-f]{12,}", name):
        return name[:12]
    return hashlib.sha256(os.fsencode(os.path.abspath(upper))).hexdigest()[:12]


@contextlib.contextmanager
def _exclusive(upper: Path) -> Iterator[None]:
    """One command at a time per writable layer: overlayfs with ``index=off`` would let two
    mounts share an upper directory, which corrupts it."""
    fd = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LayerhubError("another command is running in this container") from None
        yield
    finally:
        os.close(fd)


class _Scratch:
    """What one run creates in the scratch directory, removed again on the way out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        self.created: list[Path] = []
        self.mounted: Path | None = None
        self.runc: str = find_runc() or "runc"
        self.container_id: str | None = None

    def reserve(self, name: str) -> Path:
        """A path in scratch that this run may create (and will remove)."""
        path = self.root / name
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists: scratch must be a fresh directory")
        self.created.append(path)
        return path

    def make(self, name: str) -> Path:
        """A new directory in scratch."""
        path = self.reserve(name)
        path.mkdir()
        return path

    def make_init(self, *, hostname: str, network: bool) -> dict[str, str]:
        """The init layer and the files bound over its mount points; returns the binds."""
        init = self.make("init")
        for name in MOUNT_POINT_DIRS:
            (init / name).mkdir()
            os.chmod(init / name, 0o755)  # whatever the umask: non-root users read /etc too
        files = self.make("files")
        contents = {
            "hostname": f"{hostname}\n",
            "hosts": (
                _read_host_file("/etc/hosts")
                if network
                else "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            )
            + f"127.0.1.1\t{hostname}\n",
        }
        if network and os.path.exists("/etc/resolv.conf"):
            contents["resolv.conf"] = _read_host_file("/etc/resolv.conf")
        binds = {}
        for name, text in contents.items():
            (files / name).write_text(text)
            (init / "etc" / name).touch()
            os.chmod(files / name, 0o644)
            os.chmod(init / "etc" / name, 0o644)
            binds[f"/etc/{name}"] = os.fspath(files / name)
        return binds

    def __enter__(self) -> _Scratch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        with shielded():
            self._clean()

    def _clean(self) -> None:
        try:
            if self.container_id is not None:
                _runc_delete(self)
        finally:
            if self.mounted is not None:
                unmount(self.mounted)
            left = mounts_under(self.root)
            if left:  # never remove a tree through a mount: that would delete image files
                raise HostFault(f"could not unmount {', '.join(left)}")
            for path in reversed(self.created):
                remove_path(path)
            if self.created_root:
                with contextlib.suppress(OSError):
                    self.root.rmdir()


def _read_host_file(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace").rstrip("\n") + "\n"
    except OSError:
        return ""


def _runc_delete(space: _Scratch) -> None:
    """Kill and delete the container if runc still knows it (``runc run`` deletes it itself
    when the command ends normally)."""
    state = space.root / "state"
    if space.container_id is None or not (state / space.container_id).exists():
        return
    done = subprocess.run(
        [space.runc, "--root", os.fspath(state), "delete", "--force", space.container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        env={"PATH": DEFAULT_PATH},
    )
    if done.returncode != 0 and (state / space.container_id).exists():
        raise HostFault(
            f"runc could not delete container {space.container_id}: "
            + done.stderr.decode(errors="replace").strip()
        )


class _Runc:
    """One ``runc run`` in the foreground, its output collected, killed at the deadline."""

    def __init__(self, space: _Scratch) -> None:
        self.space = space
        self.state = space.make("state")
        self.log = space.reserve("runc.log")

    def _runc(self, *args: str) -> list[str]:
        return [self.space.runc, "--root", os.fspath(self.state), *args]

    def run(self, argv: list[str], bundle: Path, timeout: float, limit: int) -> ExecResult:
        container_id = f"layerhub-{uuid.uuid4().hex[:16]}"
        self.space.container_id = container_id
        command = self._runc("--log", os.fspath(self.log), "--log-format", "json")
        command += ["run", "--bundle", os.fspath(bundle), container_id]
        start = time.monotonic()
        started: list[subprocess.Popen[bytes]] = []
        try:
            with shielded():  # a runc started but not yet known here could not be killed
                started.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        process_group=0,
                        env={"PATH": DEFAULT_PATH},
                    )
                )
            stdout, stderr, finished = _collect(started[0], limit, start + timeout)
            duration = time.monotonic() - start
            if not finished:
                self._kill(started[0])
                raise CommandTimeout(
                    f"command {shlex.join(argv)!r} did not finish within {timeout:g} s"
                    " and was killed"
                )
        finally:
            with shielded():
                for proc in started:
                    if proc.poll() is None:  # an exception or a signal: nothing may outlive it
                        self._kill(proc)
                    for pipe in (proc.stdout, proc.stderr):
                        if pipe is not None:
                            pipe.close()
        proc = started[0]
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        if code != 0:
            code = self._start_failure(code)
        return ExecResult(code, stdout, stderr, duration)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """Kill the container and reap runc. Until runc has created the container, `runc kill`
        finds nothing: it is repeated until runc ends (a killed init ends `runc run`)."""
        with shielded():
            self._kill_now(proc)

    def _kill_now(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + KILL_GRACE
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(
                    self._runc("kill", self.space.container_id or "", "KILL"),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=KILL_GRACE,
                    env={"PATH": DEFAULT_PATH},
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)
        if proc.poll() is None:
            # runc itself is stuck: end it; the container, in a session of its own, goes
            # with `runc delete --force` after
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _runc_delete(self.space)

    def _start_failure(self, code: int) -> int:
        """Tell a command that failed from a container runc could not start; the exit code
        Docker gives a command it cannot find (127) or execute (126)."""
        errors = []
        with contextlib.suppress(OSError):
            for line in self.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("level") == "error":
                        errors.append(str(entry.get("msg", "")))
        if not errors:
            return code
        message = errors[-1].removeprefix("runc run failed: ")
        if "unable to start container process: exec: " in message:
            return 126 if "permission denied" in message else 127
        raise LayerhubError(f"the container could not start: {message}")


def _collect(
    proc: subprocess.Popen[bytes], limit: int, deadline: float
) -> tuple[bytes, bytes, bool]:
    """Read both pipes until the process ends or the deadline passes; keep ``limit`` bytes of
    each (the rest is read and dropped, so the command never blocks on a full pipe)."""
    pipes: list[IO[bytes]] = [p for p in (proc.stdout, proc.stderr) if p is not None]
    kept = {p.fileno(): bytearray() for p in pipes}
    with selectors.DefaultSelector() as selector:
        for pipe in pipes:
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe.fileno(), selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(kept[pipes[0].fileno()]), bytes(kept[pipes[1].fileno()]), False
            for key, _ in selector.select(min(remaining, 60.0)):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                room = limit - len(kept[fd])
                if room > 0:
                    kept[fd] += chunk[:room]
    stdout, stderr = bytes(kept[pipes[0].fileno()]), bytes(kept[pipes[1].fileno()])
    try:
        proc.wait(max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return stdout, stderr, False
    return stdout, stderr, True
