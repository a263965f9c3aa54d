"""Wasted-space benchmark, run on demand: ``.venv/bin/python bench/wasted.py [--layers L]
[--files N] [--database URL]``.

Records the file indexes of one image of L layers of N files each (directories of 50 files,
sizes spread over four orders of magnitude; each layer above the first rewrites 5% of the
files below it and deletes one directory), in a database of its own (a temporary SQLite file
by default; ``--database postgres://...`` names an empty database), then times what a request
does, the median of ``--runs``: reading the index, stacking it, asking for duplicated
contents, one directory of the tree, and the image page's panel through the server. These are
the numbers behind "nothing is cached" in the README.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", help="a database URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="layerhub-bench-wasted-")
    os.environ["DATABASE_URL"] = args.database or f"sqlite:///{tmp}/bench.sqlite3"
    os.environ.setdefault("LAYERHUB_STORE", f"{tmp}/store")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse

    from layerhub.engine.file_index import DIRECTORY, FILE, WHITEOUT, FileRecord
    from layerhub.engine.wasted import wasted_space
    from layerhub.images.duplicates import shared_contents
    from layerhub.images.file_index import layer_files, layer_files_record
    from layerhub.images.models import Image, ImageLayer, Layer
    from layerhub.images.wasted import image_tree_page, image_wasted

    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["testserver"]
    call_command("migrate", verbosity=0)
    rng = random.Random(5)

    def digest(text: str) -> str:
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    image = Image.objects.create(
        manifest_digest=digest("manifest"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest("config"),
        config={},
    )
    paths: list[str] = []
    start = time.perf_counter()
    parent = None
    for position in range(args.layers):
        layer = Layer.objects.create(
            chain_id=digest(f"chain{position}"),
            parent=parent,
            digest=digest(f"layer{position}"),
            diff_id=digest(f"diff{position}"),
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            size=0,
        )
        ImageLayer.objects.create(image=image, layer=layer, position=position)
        parent = layer
        records: list[FileRecord] = []
        dirs: set[str] = set()
        if paths:
            gone = rng.choice(paths).rpartition("/")[0]
            records.append(FileRecord(gone, WHITEOUT))
            paths = [p for p in paths if not p.startswith(gone + "/")]
            chosen = rng.sample(paths, min(len(paths), args.files // 20))
        else:
            chosen = []
        fresh = [
            f"usr/share/l{position}/d{i // 50}/file{i}.dat" for i in range(args.files - len(chosen))
        ]
        for path in chosen + fresh:
            parts = path.split("/")
            for depth in range(1, len(parts)):
                d = "/".join(parts[:depth])
                if d not in dirs:
                    dirs.add(d)
                    records.append(FileRecord(d, DIRECTORY, 0o755))
            size = int(10 ** rng.uniform(1, 5))
            sha = hashlib.sha256(f"{path}{position}".encode()).digest()
            records.append(FileRecord(path, FILE, 0o644, size=size, sha256=sha))
        paths.extend(fresh)
        layer_files_record(layer, records)
    seeded = time.perf_counter() - start
    ids = [row.layer_id for row in ImageLayer.objects.filter(image=image).order_by("position")]
    entries = sum(len(v) for v in layer_files(ids).values())
    print(
        f"{connection.vendor}: {args.layers} layers, {entries} index entries, "
        f"recorded in {seeded:.1f} s",
        flush=True,
    )
    stacked = [layer_files(ids)[i] for i in ids]
    user = get_user_model().objects.create_superuser("bench", password="bench-pw")
    client = Client()
    client.force_login(user)
    from layerhub.images import wasted as wasted_module

    def cold() -> object:
        wasted_module._stacks.clear()
        return image_wasted(image, duplicates=False)

    rows: dict[str, Callable[[], object]] = {
        "image_wasted, stack made (no duplicates)": cold,
        "read the index (layer_files)": lambda: layer_files(ids),
        "stack it (engine wasted_space)": lambda: wasted_space(stacked),
        "duplicated contents (shared_contents)": lambda: shared_contents(ids),
        "image_wasted (a kept stack)": lambda: image_wasted(image),
        "one tree directory (selector)": lambda: image_tree_page(
            image_wasted(image, duplicates=False), "/usr/share/l0"
        ),
        "wasted panel (HTTP)": lambda: client.get(reverse("images:image_wasted", args=[image.pk])),
        "tree directory (HTTP, htmx)": lambda: client.get(
            reverse("images:files", args=[image.pk]),
            {"path": "/usr/share/l0/d3"},
            HTTP_HX_REQUEST="true",
        ),
    }
    for label, fn in rows.items():
        fn()  # warm
        print(f"  {label:40} {median_ms(fn, args.runs):8.1f} ms", flush=True)
    report = image_wasted(image).report
    assert report is not None
    print(f"  wasted {report.wasted} of {report.total} bytes, {len(report.copies)} copies")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
