"""File indexes for the demo catalog: N layers x M entries, straight into the database.

Real layers of one distribution share most of their paths (every Debian layer writes under
``usr/lib/x86_64-linux-gnu``, ``usr/share/doc``, ``var/lib/dpkg/info``...), and two builds of
the same Dockerfile a week apart (near-twins) hold mostly the same bytes. So each family
(Debian/Ubuntu, Alpine, UBI) has a pool of paths, laid out as its packages lay them out, and
every layer of that family draws its files from the pool: paths repeat across the family's
layers. Sizes are log-normal (median 3 KB, as in a Debian root: many small files, a few
large libraries), one size per path and version. A layer that rebuilds the layer before it
(half of them) keeps 90% of its files' versions, so their sha256 repeat; other layers pick
one of a few versions of each file. About one entry in a thousand is a whiteout (a file an
upper layer deletes). Every file has its parent directories in the layer, as a tar has them.

The same seed makes the same indexes. Nothing is written to the store.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from django.db import connection, transaction

from layerhub.engine.file_index import DIRECTORY, FILE, WHITEOUT
from layerhub.images.file_index import copy_rows
from layerhub.images.models import FileEntry, Layer, LayerFiles

# log-normal file sizes: median e**MU bytes
SIZE_MU = math.log(3000)
SIZE_SIGMA = 2.0
SIZE_MAX = 200_000_000
# how many paths a family's pool holds, per entry a layer has (at least this many)
POOL_PATHS = 40_000
# a rebuild keeps this share of its twin's file versions
TWIN_KEEP = 0.9
TWIN_SHARE = 0.5
WHITEOUT_SHARE = 0.001
VERSIONS = 3
BATCH = 5000

_SYLLABLES = [
    "ac", "al", "ar", "at", "bz", "ca", "cr", "cu", "db", "de", "ev", "ex", "fo", "ga", "gc",
    "gl", "gn", "gp", "gt", "ic", "id", "io", "jp", "js", "k5", "ke", "ld", "li", "lz", "ma",
    "mo", "nc", "ne", "ng", "nl", "nu", "ob", "op", "pa", "pc", "pe", "pn", "po", "py", "qt",
    "re", "rl", "sa", "se", "sl", "sq", "ss", "sy", "ta", "te", "ti", "ud", "un", "ut", "va",
    "xm", "xz", "ya", "ze", "zl", "zs",
]  # fmt: skip
_LANGS = ["de", "es", "fr", "it", "ja", "nl", "pl", "pt_BR", "ru", "sv", "tr", "uk", "zh_CN"]

# per family: (directory template, weight, name template); {p} a package, {l} a language
_LAYOUTS: dict[str, list[tuple[str, float, str]]] = {
    "debian": [
        ("usr/lib/x86_64-linux-gnu", 0.18, "lib{p}.so.{n}"),
        ("usr/lib/x86_64-linux-gnu/{p}", 0.06, "{p}{n}.so"),
        ("usr/share/doc/{p}", 0.14, "{doc}"),
        ("usr/share/man/man{n}", 0.06, "{p}.{n}.gz"),
        ("usr/share/locale/{l}/LC_MESSAGES", 0.08, "{p}.mo"),
        ("usr/lib/python3/dist-packages/{p}", 0.12, "{p}_{n}.py"),
        ("usr/include/{p}", 0.07, "{p}{n}.h"),
        ("usr/share/{p}", 0.09, "{p}{n}.dat"),
        ("usr/bin", 0.05, "{p}{n}"),
        ("usr/sbin", 0.01, "{p}d"),
        ("var/lib/dpkg/info", 0.08, "{p}.{ext}"),
        ("etc/{p}", 0.03, "{p}.conf"),
        ("usr/share/zoneinfo/{zone}", 0.03, "{P}"),
    ],
    "alpine": [
        ("usr/lib", 0.22, "lib{p}.so.{n}"),
        ("lib", 0.05, "lib{p}.so.{n}"),
        ("usr/share/{p}", 0.15, "{p}{n}.dat"),
        ("usr/lib/python3.12/site-packages/{p}", 0.2, "{p}_{n}.py"),
        ("usr/include/{p}", 0.1, "{p}{n}.h"),
        ("usr/bin", 0.1, "{p}{n}"),
        ("etc/{p}", 0.05, "{p}.conf"),
        ("usr/share/zoneinfo/{zone}", 0.13, "{P}"),
    ],
    "ubi": [
        ("usr/lib64", 0.25, "lib{p}.so.{n}"),
        ("usr/share/doc/{p}", 0.15, "{doc}"),
        ("usr/share/licenses/{p}", 0.05, "LICENSE"),
        ("usr/lib/jvm/java-21-openjdk/lib/{p}", 0.15, "{p}{n}.jar"),
        ("usr/share/man/man{n}", 0.1, "{p}.{n}.gz"),
        ("usr/bin", 0.1, "{p}{n}"),
        ("etc/pki/{p}", 0.05, "{p}.pem"),
        ("usr/share/{p}", 0.15, "{p}{n}.dat"),
    ],
}
# what an application layer adds, over any family
_APP_LAYOUT: list[tuple[str, float, str]] = [
    ("usr/local/lib/python3.12/site-packages/{p}", 0.35, "{p}_{n}.py"),
    ("app/node_modules/{p}/lib", 0.35, "{p}{n}.js"),
    ("usr/local/bin", 0.05, "{p}{n}"),
    ("app/{p}", 0.25, "{p}{n}.{ext}"),
]
# files real images have, for searches to find: (family, path)
_LANDMARKS = {
    "debian": [
        "etc/os-release",
        "usr/lib/x86_64-linux-gnu/libssl.so.3",
        "usr/lib/x86_64-linux-gnu/libcrypto.so.3",
        "var/lib/dpkg/status",
    ],
    "alpine": ["etc/os-release", "usr/lib/libssl.so.3", "lib/apk/db/installed"],
    "ubi": ["etc/os-release", "usr/lib64/libssl.so.3", "var/lib/rpm/rpmdb.sqlite"],
}
_DOCS = ["copyright", "changelog.Debian.gz", "README.md", "NEWS.gz", "AUTHORS"]
_ZONES = ["Europe", "America", "Asia", "Africa", "Australia", "Pacific"]
_EXTS = ["list", "md5sums", "conffiles", "triggers", "json", "yaml", "txt"]


@dataclass(frozen=True)
class FileIndexSeed:
    """What was seeded: layers indexed, entries, and the regular files' bytes."""

    layers: int
    entries: int
    content_bytes: int


def _packages(rng: random.Random, count: int) -> list[str]:
    names: set[str] = set()
    while len(names) < count:
        names.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(names)


def _pool(family: str, rng: random.Random, count: int, app: bool) -> list[str]:
    """``count`` distinct file paths as ``family``'s packages lay them out."""
    layout = _APP_LAYOUT if app else _LAYOUTS[family]
    weights = [w for _, w, _ in layout]
    packages = _packages(rng, 2000)
    paths: set[str] = set(() if app else _LANDMARKS[family])
    # each layout has far more combinations than any pool needs; the bound only guards
    for _ in range(count * 20):
        if len(paths) >= count:
            break
        directory, _, name = rng.choices(layout, weights)[0]
        p = rng.choice(packages)
        values = {
            "p": p,
            "P": p.capitalize(),
            "n": str(rng.randint(0, 29)),
            "l": rng.choice(_LANGS),
            "doc": rng.choice(_DOCS),
            "zone": rng.choice(_ZONES),
            "ext": rng.choice(_EXTS),
        }
        paths.add(f"{directory.format(**values)}/{name.format(**values)}")
    return sorted(paths)


@functools.cache
def _size(path: str, version: int) -> int:
    """A log-normal size, the same for a path and version wherever it appears."""
    seed = int.from_bytes(hashlib.blake2b(f"{path}\0{version}".encode(), digest_size=8).digest())
    size = int(random.Random(seed).lognormvariate(SIZE_MU, SIZE_SIGMA))
    return min(size, SIZE_MAX)


@functools.cache
def _digest(path: str, version: int) -> bytes:
    return hashlib.sha256(f"layerhub demo {path}\0{version}".encode()).digest()


Row = tuple[int, str, str, str, int, int, int, int, bytes | None, str]


def _layer_rows(
    layer_id: int, files: list[tuple[str, int]], whiteouts: list[str], entries: int
) -> tuple[list[Row], int]:
    """A layer's rows (parent directories first, as a tar walks them), at most ``entries``
    with its whiteouts, and its content bytes."""
    rows: list[Row] = []
    seen: set[str] = set()
    content = 0
    room = entries - len(whiteouts)
    for path, version in sorted(files):
        parent = path.rpartition("/")[0]
        missing = []
        while parent and parent not in seen:
            missing.append(parent)
            parent = parent.rpartition("/")[0]
        if len(rows) + len(missing) + 1 > room:
            break
        seen.update(missing)
        for directory in reversed(missing):
            name = directory.rpartition("/")[2]
            rows.append((layer_id, directory, name, DIRECTORY, 0o755, 0, 0, 0, None, ""))
        size = _size(path, version)
        content += size
        name = path.rpartition("/")[2]
        rows.append((layer_id, path, name, FILE, 0o644, 0, 0, size, _digest(path, version), ""))
    for path in whiteouts:
        name = path.rpartition("/")[2]
        rows.append((layer_id, path, name, WHITEOUT, 0, 0, 0, 0, None, ""))
    return rows, content


def plan_layer_files(
    layers: list[Layer], families: dict[int, str], app_layers: set[int], per_layer: int, seed: int
) -> Iterator[tuple[int, list[Row], int]]:
    """Each layer's (id, rows, content bytes): ``per_layer`` entries about (files and the
    directories they need), drawn from the family's pool."""
    rng = random.Random(seed)
    pool_size = max(POOL_PATHS, per_layer * 3)
    pools: dict[tuple[str, bool], list[str]] = {}
    previous: dict[tuple[str, bool], dict[str, int]] = {}
    for layer in layers:
        key = (families.get(layer.pk, "debian"), layer.pk in app_layers)
        if key not in pools:
            pools[key] = _pool(key[0], random.Random(f"{seed} {key}"), pool_size, key[1])
        pool = pools[key]
        twin = previous.get(key) if rng.random() < TWIN_SHARE else None
        files: dict[str, int] = {}
        if twin is not None:
            for path, version in twin.items():
                files[path] = version if rng.random() < TWIN_KEEP else rng.randrange(VERSIONS)
        else:
            landmarks = [] if key[1] else _LANDMARKS[key[0]]
            for path in landmarks:
                files[path] = rng.randrange(VERSIONS)
            # a run of the pool (a layer installs whole packages) from a random start
            start = rng.randrange(len(pool))
            # more than fit: the rows stop at per_layer entries with the directories they need
            want = per_layer
            step = max(1, len(pool) // (want * 2))
            index = start
            while len(files) < want:
                files[pool[index % len(pool)]] = rng.randrange(VERSIONS)
                index += rng.randint(1, step)
        previous[key] = files
        whiteouts = [
            p for p in rng.sample(pool, max(0, int(per_layer * WHITEOUT_SHARE))) if p not in files
        ]
        rows, content = _layer_rows(layer.pk, list(files.items()), whiteouts, per_layer)
        yield layer.pk, rows, content


def family_of(created_by: str) -> str:
    """The distribution a base layer's history line names."""
    text = created_by.lower()
    if "alpine" in text:
        return "alpine"
    if "ubi" in text:
        return "ubi"
    return "debian"


def seed_layer_files(
    layers: list[Layer],
    per_layer: int,
    *,
    families: dict[int, str],
    app_layers: set[int],
    seed: int = 0,
) -> FileIndexSeed:
    """Write a file index of about ``per_layer`` entries for each of ``layers`` (COPY on
    PostgreSQL), with its LayerFiles row, in one transaction. ``families`` maps a layer id
    to its distribution (``family_of``); ``app_layers`` are an application's (their files
    are a language's packages and the application, not a distribution's)."""
    entries = content_total = 0
    with transaction.atomic():
        summaries: list[LayerFiles] = []
        plan = plan_layer_files(layers, families, app_layers, per_layer, seed)

        def all_rows() -> Iterator[Row]:
            nonlocal entries, content_total
            for layer_id, rows, content in plan:
                entries += len(rows)
                content_total += content
                summaries.append(
                    LayerFiles(layer_id=layer_id, entry_count=len(rows), content_bytes=content)
                )
                yield from rows

        if connection.vendor == "postgresql":
            copy_rows(all_rows())
        else:
            batch: list[FileEntry] = []
            for r in all_rows():
                batch.append(
                    FileEntry(
                        layer_id=r[0], path=r[1], name=r[2], kind=r[3], mode=r[4],
                        uid=r[5], gid=r[6], size=r[7], sha256=r[8], link=r[9],
                    )
                )  # fmt: skip
                if len(batch) >= BATCH:
                    FileEntry.objects.bulk_create(batch)
                    batch = []
            FileEntry.objects.bulk_create(batch)
        LayerFiles.objects.bulk_create(summaries, batch_size=BATCH)
    _size.cache_clear()
    _digest.cache_clear()
    return FileIndexSeed(len(summaries), entries, content_total)
