"""Catalog search benchmark, run on demand: ``.venv/bin/python bench/insights.py``.

Seeds a demo catalog with file indexes (``seed_demo --file-layers 1000 --files 10000``: 1,000
distinct layers x 10,000 entries, 10M rows, written with COPY) and installed packages in a
PostgreSQL database created for the run and dropped after it, then times, as a superuser and
as a (non-staff) team member whose every query goes through the permission filters, after a
warm-up, the median of ``--runs`` rounds of:

- a file search by exact path, by suffix glob (``*/libssl.so.3``), by prefix, by sha256
  (``layerhub.images.file_search``), each with the names of the images found;
- a package search (``openssl`` below 3.0.15, ``layerhub.images.package_search``);

against a 200 ms target. It also prints the file index's bytes on PostgreSQL
(``pg_total_relation_size`` of the FileEntry table: heap, TOAST and indexes) against the bytes
of the files it describes (the seeded regular files' sizes), against a 5% target.

SQLite runs the same searches on a smaller seed (``--sqlite-layers``, no target): it must
work, not race. Each database runs in a child process of its own.
"""

from __future__ import annotations

import argparse
import os
import random
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

TARGET_MS = 200.0
TARGET_SHARE = 0.05
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
# an image holds about 1.4 layers of its own: this many images give the layers to index
IMAGES_PER_LAYER = 1.4


def _seed_packages(rng: random.Random) -> int:
    """Every image gets a Debian-like package list (about 120 packages, openssl among them at
    one of a few versions), as the unpack's scan would record it."""
    from layerhub.images.models import Image, Package

    names = [f"lib{i:03d}" for i in range(400)]
    versions = ["3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "3.0.14-1~deb12u2", "3.0.15-1~deb12u1"]
    rows = []
    for image_id in Image.objects.values_list("pk", flat=True):
        rows.append(
            Package(
                image_id=image_id,
                ecosystem="deb",
                name="openssl",
                name_key="openssl",
                version=rng.choice(versions),
                source_path="/var/lib/dpkg/status",
            )
        )
        for name in rng.sample(names, 120):
            rows.append(
                Package(
                    image_id=image_id,
                    ecosystem="deb",
                    name=name,
                    name_key=name,
                    version=f"{rng.randint(1, 9)}.{rng.randint(0, 20)}-{rng.randint(1, 5)}",
                    source_path="/var/lib/dpkg/status",
                )
            )
    Package.objects.bulk_create(rows, batch_size=5000)
    return len(rows)


def child(layers: int, files: int, runs: int) -> int:
    """In the child: migrate, seed, time each search; print one line per search."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from layerhub.accounts.models import Membership, Role, Team
    from layerhub.images.file_search import file_query, file_search
    from layerhub.images.models import FileEntry, LayerFiles
    from layerhub.images.package_search import package_query, package_search

    call_command("migrate", verbosity=0)
    vendor = connection.vendor
    images = max(50, int(layers * IMAGES_PER_LAYER))
    start = time.perf_counter()
    call_command(
        "seed_demo",
        images=str(images),
        file_layers=str(layers),
        files=str(files),
        stdout=open(os.devnull, "w"),  # noqa: SIM115
    )
    seeded = time.perf_counter() - start
    entries = FileEntry.objects.count()
    content = sum(LayerFiles.objects.values_list("content_bytes", flat=True))
    indexed = LayerFiles.objects.count()
    t0 = time.perf_counter()
    packages = _seed_packages(random.Random(0))
    print(
        f"{vendor}: seeded {images} images, {indexed} layers x {files} entries ({entries} rows, "
        f"describing {content / 1e9:.1f} GB of files) in {seeded:.1f} s "
        f"({entries / seeded:,.0f} rows/s); {packages} packages "
        f"in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")  # as autovacuum leaves a live catalog
    # a hash a few near-twin layers share
    shared = (
        FileEntry.objects.filter(kind="f", path__startswith="usr/lib/x86_64-linux-gnu/lib")
        .values_list("sha256", flat=True)
        .first()
    )
    sha = bytes(shared).hex() if shared else "0" * 64
    searches: list[tuple[str, Any]] = [
        ("file: exact path", file_query(pattern="/usr/lib/x86_64-linux-gnu/libssl.so.3")),
        ("file: suffix glob */libssl.so.3", file_query(pattern="*/libssl.so.3")),
        ("file: prefix /usr/share/doc/", file_query(pattern="/usr/share/doc/")),
        ("file: glob usr/lib/*/libcrypto*", file_query(pattern="usr/lib/*/libcrypto*")),
        ("file: name glob *.so.3", file_query(pattern="*.so.3")),
        ("file: sha256", file_query(sha256=sha)),
        ("package: openssl < 3.0.15", package_query(name="openssl", op="<", version="3.0.15")),
    ]
    users = get_user_model().objects
    staff = users.create_superuser("bench", password=uuid.uuid4().hex)
    member = users.create_user("bench-member", password=uuid.uuid4().hex)
    Membership.objects.create(team=Team.objects.get(name="default"), user=member, role=Role.VIEWER)
    failed = False
    for who, user in (("staff", staff), ("team member", member)):
        print(f"  as {who}:", flush=True)
        for name, query in searches:

            def run(query: Any = query, user: Any = user) -> int:
                if hasattr(query, "mode"):
                    return len(file_search(user=user, query=query).matches)
                return len(package_search(user=user, query=query))

            count = run()  # warm-up
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                run()
                times.append((time.perf_counter() - t) * 1000)
            median = statistics.median(times)
            verdict = ""
            if vendor == "postgresql":
                ok = median < TARGET_MS
                failed |= not ok
                verdict = f"  [target < {TARGET_MS:.0f} ms: {'ok' if ok else 'OVER'}]"
            print(
                f"    {name:<34} {median:8.1f} ms median of {runs} (min {min(times):.1f}, "
                f"max {max(times):.1f}), {count} rows{verdict}",
                flush=True,
            )
    if vendor == "postgresql":
        with connection.cursor() as cursor:
            table = FileEntry._meta.db_table
            cursor.execute(
                "SELECT pg_total_relation_size(%s), pg_relation_size(%s), pg_indexes_size(%s)",
                [table, table, table],
            )
            total, heap, indexes = cursor.fetchone()
            cursor.execute(
                "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) "
                "FROM pg_index WHERE indrelid = %s::regclass ORDER BY 2 DESC",
                [table],
            )
            each = ", ".join(f"{n} {s / 1e6:.0f} MB" for n, s in cursor.fetchall())
        share = total / content if content else 0.0
        ok = share <= TARGET_SHARE
        print(
            f"  index: {total / 1e6:,.0f} MB ({heap / 1e6:,.0f} MB rows, {indexes / 1e6:,.0f} MB "
            f"indexes: {each}), {total / max(entries, 1):.0f} bytes an entry; "
            f"{share:.2%} of the {content / 1e9:.1f} GB of files it describes"
            f"  [target <= {TARGET_SHARE:.0%}: {'ok' if ok else 'OVER'}]",
            flush=True,
        )
        failed |= not ok
    return 1 if failed else 0


def _run_child(database_url: str, store: Path, layers: int, files: int, runs: int) -> int:
    env = dict(
        os.environ,
        DATABASE_URL=database_url,
        LAYERHUB_STORE=str(store),
        LAYERHUB_QUEUE=f"layerhub-bench-{uuid.uuid4().hex[:8]}",
        PYTHONWARNINGS="ignore",
    )
    cmd = [sys.executable, __file__, "--child", "--layers", str(layers), "--files", str(files)]
    cmd += ["--runs", str(runs)]
    return subprocess.run(cmd, env=env, cwd=REPO, check=False).returncode


def bench_sqlite(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="layerhub-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        return _run_child(url, Path(tmp) / "store", args.sqlite_layers, args.files, args.runs)


def bench_postgres(args: argparse.Namespace) -> int:
    import psycopg

    server = urlsplit(args.postgres)
    admin = urlunsplit(server._replace(scheme="postgresql"))
    name = f"layerhub_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"postgresql: not measured: cannot create a database on {server.netloc}: {exc}")
        return 0
    try:
        url = urlunsplit(server._replace(path=f"/{name}"))
        with tempfile.TemporaryDirectory(prefix="layerhub-bench-") as tmp:
            return _run_child(url, Path(tmp) / "store", args.layers, args.files, args.runs)
    finally:
        if args.keep:
            print(f"kept: {urlunsplit(server._replace(path=f'/{name}'))} (drop it when done)")
        else:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=1000, help="indexed layers (1000)")
    parser.add_argument("--files", type=int, default=10_000, help="entries a layer (10000)")
    parser.add_argument(
        "--sqlite-layers", type=int, default=50, help="indexed layers on SQLite (50)"
    )
    parser.add_argument("--runs", type=int, default=9, help="timed rounds a search (9)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument(
        "--keep", action="store_true", help="keep the PostgreSQL database (to EXPLAIN)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.layers, args.files, args.runs)
    print(
        f"catalog searches: file indexes of {args.layers} layers x {args.files} entries "
        f"(SQLite: {args.sqlite_layers} layers), median of {args.runs} "
        f"(target < {TARGET_MS:.0f} ms on PostgreSQL; index <= {TARGET_SHARE:.0%} of the files)"
    )
    failed = 0
    if args.db in ("sqlite", "both"):
        failed |= bench_sqlite(args)
    if args.db in ("postgres", "both"):
        failed |= bench_postgres(args)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
