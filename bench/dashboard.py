"""Dashboard benchmark, run on demand: ``.venv/bin/python bench/dashboard.py [--images N]``.

Seeds a demo catalog (``manage.py seed_demo``, 10,000 images by default) in a database of its
own, on SQLite and on PostgreSQL, then times the server's render of the overview, the images
list, an image page and the sharing picture's first screen: Django's test client, signed in as
a superuser and then as a (non-staff) developer of the team that owns the catalog, whose every
page goes through the permission filters, after a warm-up; the median of ``--runs`` renders
each, and the SQL queries one render makes. The target is under 150 ms each.

Each database runs in a child process of its own (Django's settings are read once per
process): a SQLite file in a temporary folder, and a PostgreSQL database created for the run
and dropped after it (``--postgres`` names the server, default postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TARGET_MS = 150.0
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def child(images: int, runs: int) -> int:
    """In the child: migrate, seed, sign in, time each page; print one line per page."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from layerhub.images.models import Image

    # as served: no query log kept per request, and the test client's host allowed
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["testserver"]

    call_command("migrate", verbosity=0)
    start = time.perf_counter()
    call_command("seed_demo", images=images, stdout=open(os.devnull, "w"))  # noqa: SIM115
    seeded = time.perf_counter() - start
    vendor = connection.vendor
    print(f"{vendor}: seeded {images} images in {seeded:.1f} s", flush=True)
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # fresh statistics, as autovacuum would give a live catalog

    from layerhub.accounts.models import Membership, Role, Team

    users = get_user_model().objects
    staff = users.create_superuser("bench", password=uuid.uuid4().hex)
    # a team member who is not staff: every page filters through the permission module
    member = users.create_user("bench-member", password=uuid.uuid4().hex)
    Membership.objects.create(
        team=Team.objects.get(name="default"), user=member, role=Role.DEVELOPER
    )
    # an application image in the middle of the catalog, on a shared base
    middle = Image.objects.order_by("pk").values_list("pk", flat=True)[images // 2]
    pages = [
        ("overview", reverse("dashboard:home")),
        ("images list", reverse("images:list")),
        ("image page", reverse("images:detail", args=[middle])),
        ("sharing (first screen)", reverse("dashboard:sharing")),
    ]
    for who, user in (("staff", staff), ("team member", member)):
        print(f"  as {who}:", flush=True)
        client = Client()
        client.force_login(user)
        _time_pages(client, pages, runs)
    return 0


def _time_pages(client: Any, pages: list[tuple[str, str]], runs: int) -> None:
    """Print each page's median render time and query count for ``client``'s user."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    width = max(len(name) for name, _ in pages)
    for name, url in pages:
        status = client.get(url).status_code  # warm-up: templates, connection, caches
        if status != 200:
            print(f"  {name:<{width}}  HTTP {status}: not measured", flush=True)
            continue
        client.get(url)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        median = statistics.median(times)
        verdict = "ok" if median < TARGET_MS else "OVER"
        print(
            f"  {name:<{width}}  {median:7.1f} ms median of {runs}"
            f" (min {min(times):.1f}, max {max(times):.1f}), {len(queries)} queries"
            f"  [target < {TARGET_MS:.0f} ms: {verdict}]",
            flush=True,
        )


def _run_child(database_url: str, store: Path, args: argparse.Namespace) -> int:
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        LAYERHUB_STORE=str(store),
        LAYERHUB_QUEUE=f"layerhub-bench-{uuid.uuid4().hex[:8]}",
        PYTHONWARNINGS="ignore",
    )
    cmd = [sys.executable, __file__, "--child", "--images", str(args.images)]
    cmd += ["--runs", str(args.runs)]
    return subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode


def bench_sqlite(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="layerhub-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        return _run_child(url, Path(tmp) / "store", args)


def bench_postgres(args: argparse.Namespace) -> int:
    import psycopg

    server = urlsplit(args.postgres)
    admin = urlunsplit(server._replace(scheme="postgresql"))
    name = f"layerhub_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        # no server here is not a failure of the code measured (`make bench` goes on)
        print(f"postgresql: not measured: cannot create a database on {server.netloc}: {exc}")
        return 0
    try:
        url = urlunsplit(server._replace(path=f"/{name}"))
        with tempfile.TemporaryDirectory(prefix="layerhub-bench-") as tmp:
            return _run_child(url, Path(tmp) / "store", args)
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="catalog size (10000)")
    parser.add_argument("--runs", type=int, default=15, help="timed renders per page (15)")
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres", "both"),
        default="both",
        help="which databases to measure (both)",
    )
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.images, args.runs)
    print(f"dashboard render times, {args.images} images, median of {args.runs} (target < 150 ms)")
    failed = 0
    if args.db in ("sqlite", "both"):
        failed |= bench_sqlite(args)
    if args.db in ("postgres", "both"):
        failed |= bench_postgres(args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
