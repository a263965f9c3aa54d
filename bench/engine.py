"""Engine benchmark, run on demand: ``.venv/bin/python bench/engine.py [--rounds N]``.

1. apply: GNU tar vs layerhub's ``apply_layer`` on the same generated layer (about 200 MB and
   20,000 files), plain and gzip, each run in a fresh directory with a cold page cache (when
   root), alternating which tool goes first. layerhub runs in a child process so its peak RSS
   can be set beside tar's.
2. diff: ``diff_to_store`` of a writable directory holding 100 changed files against its fair
   peer, ``tar -C upper -c | gzip`` (what Docker's overlay2 differ does), caches dropped the
   same way, alternating. The diff never reads the base: that its time does not depend on the
   base's size is a property of the design, printed as such, not a measured verdict.
3. index: ``apply_layer`` with the file index (each regular file's sha256 taken as it is
   written, every entry recorded) vs ``apply_layer`` without, on the same layer, plain and
   gzip, caches dropped the same way, alternating which goes first; the ratio of medians must
   stay within 1.15. ``--index-only`` runs this part alone.

Everything is generated under a temporary directory that is removed at the end. Nothing here is
asserted or hard-coded: the verdict lines are computed from the medians measured in this run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import (  # noqa: E402
    GNU_TIME,
    Run,
    compile_project,
    drop_caches,
    ratio_line,
    run_measured,
    tar_gzip_blob,
    tool_version,
)
from layerhub.engine.diff import diff_to_store  # noqa: E402
from layerhub.engine.store import Store  # noqa: E402
from layerhub.engine.whiteouts import WhiteoutFormat, default_format  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
BIG_FILES = 100
SMALL_SIZES = (100, 10 * 1024)
DIFF_TARGET_S = 0.2

# The child that applies a layer: imports timed apart from the apply, result as JSON on stdout.
APPLY_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from layerhub.engine.apply import apply_layer
from layerhub.engine.whiteouts import format_named
t1 = time.perf_counter()
index = len(sys.argv) > 4 and sys.argv[4] == "index"
with open(sys.argv[1], "rb") as f:
    r = apply_layer(f, Path(sys.argv[2]), whiteouts=format_named(sys.argv[3]), index=index)
t2 = time.perf_counter()
write_s = 0.0
if r.files is not None:  # what an unpacker process does next: hand the index to its parent
    from layerhub.engine.file_index import write_records
    write_records(Path(sys.argv[2] + ".index"), r.files)
    write_s = time.perf_counter() - t2
print(json.dumps({"import_s": t1 - t0, "apply_s": t2 - t1, "entries": r.entry_count,
                  "tar_size": r.tar_size, "compression": r.compression,
                  "records": len(r.files or ()), "write_s": write_s}))
"""
INDEX_LIMIT = 1.15  # the file index may add at most 15% to a layer's unpack time


# -- the machine -------------------------------------------------------------------------------


# -- the generated layer -----------------------------------------------------------------------


@dataclass
class Layer:
    src: Path  # the generated tree
    tar: Path
    tgz: Path
    files: list[str]  # relative paths of regular files
    dirs: int
    content_bytes: int

    @property
    def entries(self) -> int:
        return len(self.files) + self.dirs + 1  # the root "./" too

    @property
    def tar_size(self) -> int:
        return self.tar.stat().st_size


def text_pool(rng: random.Random, size: int) -> bytes:
    """Compressible text: log lines and prose from a small vocabulary."""
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz") for _ in range(rng.randint(2, 9)))
        for _ in range(3_000)
    ]
    lines = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, k=rng.randint(4, 16))) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def generate_layer(work: Path, n_files: int, n_dirs: int, seed: int = 1) -> Layer:
    """A realistic layer tree: many small files, a hundred 1 MiB ones, half text, half random."""
    rng = random.Random(seed)
    src = work / "src"
    src.mkdir()
    pool = text_pool(rng, 8 * MIB)
    tops = max(1, round(n_dirs**0.5))
    dirs: list[str] = []
    for t in range(tops):
        dirs.append(f"d{t:02d}")
    while len(dirs) < n_dirs:
        dirs.append(f"d{len(dirs) % tops:02d}/s{len(dirs):03d}")
    for d in dirs:
        (src / d).mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    content = 0
    for i in range(n_files):
        size = MIB if i < BIG_FILES else rng.randint(*SMALL_SIZES)
        if i % 2:
            data = rng.randbytes(size)
        else:
            start = rng.randrange(len(pool) - size) if size < len(pool) else 0
            data = pool[start : start + size]
        rel = f"{rng.choice(dirs)}/f{i:05d}{'.txt' if i % 2 == 0 else '.bin'}"
        path = src / rel
        path.write_bytes(data)
        if i % 10 == 0:
            os.chmod(path, 0o755)
        files.append(rel)
        content += size
    tar = work / "layer.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(src), "--sort=name", "."], check=True)
    tgz = work / "layer.tar.gz"
    with open(tgz, "wb") as out:
        subprocess.run(["gzip", "-6", "-n", "-c", str(tar)], stdout=out, check=True)
    return Layer(src, tar, tgz, files, len(dirs), content)


# -- apply -------------------------------------------------------------------------------------


def run_tar(archive: Path, dest: Path) -> Run:
    flags = "-xzf" if archive.suffix == ".gz" else "-xf"
    cmd = ["tar", flags, str(archive), "-C", str(dest)]
    return run_measured(cmd, dest.with_suffix(".rss"))[0]


def run_layerhub(archive: Path, dest: Path, form: str, index: bool = True) -> Run:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", APPLY_CHILD, str(archive), str(dest), form]
    if index:
        cmd.append("index")
    run, out = run_measured(cmd, dest.with_suffix(".rss"), env)
    report = json.loads(out)
    run.apply_s = report["apply_s"]
    run.write_s = report["write_s"]
    run.records = report["records"]
    return run


def tree_count(root: Path) -> tuple[int, int]:
    """(entries, regular-file bytes) under root, root excluded."""
    entries = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        entries += len(dirnames) + len(filenames)
        size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in filenames)
    return entries, size


def bench_apply(
    layer: Layer, work: Path, rounds: int, form: str, cold: bool
) -> dict[tuple[str, str], list[Run]]:
    runs: dict[tuple[str, str], list[Run]] = {}
    tools: dict[str, Callable[[Path, Path], Run]] = {
        "GNU tar": run_tar,
        "layerhub": lambda a, d: run_layerhub(a, d, form),
    }
    archives = {"tar": layer.tar, "tar.gz": layer.tgz}
    serial = 0
    for rnd in range(rounds):
        order = list(tools) if rnd % 2 == 0 else list(reversed(tools))
        for kind, archive in archives.items():
            for tool in order:
                serial += 1
                dest = work / f"run-{serial:03d}"  # fresh, never used
                dest.mkdir()
                if cold:
                    drop_caches()
                else:
                    os.sync()
                run = tools[tool](archive, dest)
                runs.setdefault((kind, tool), []).append(run)
                if rnd == 0:  # once: both tools must have produced the same tree
                    got = tree_count(dest)
                    want = (layer.entries - 1, layer.content_bytes)
                    if got != want:
                        raise RuntimeError(f"{tool} unpacked {got} (entries, bytes), not {want}")
                shutil.rmtree(dest)  # outside the timing
                os.sync()
        print(f"  round {rnd + 1}/{rounds} done", flush=True)
    return runs


def report_apply(layer: Layer, runs: dict[tuple[str, str], list[Run]], rounds: int) -> float:
    """Print the table; return the worst layerhub/tar ratio."""
    print()
    head = f"{'archive':<8} {'tool':<9} {'median':>9} {'MB/s':>7} {'files/s':>9} {'peak RSS':>9}"
    print(head + "   in-process apply (layerhub)")
    print("-" * (len(head) + 30))
    worst = 0.0
    for kind in ("tar", "tar.gz"):
        medians = {}
        for tool in ("GNU tar", "layerhub"):
            rs = runs[(kind, tool)]
            med = statistics.median(r.wall_s for r in rs)
            medians[tool] = med
            peaks = [r.maxrss_kib for r in rs if r.maxrss_kib is not None]
            rss = f"{statistics.median(peaks) / 1024:>6.1f} MiB" if peaks else f"{'n/a':>10}"
            extra = ""
            if tool == "layerhub":
                extra = f"   {statistics.median(r.apply_s or 0.0 for r in rs):.2f} s"
            print(
                f"{kind:<8} {tool:<9} {med:>7.2f} s {layer.tar_size / MB / med:>7.1f} "
                f"{layer.entries / med:>9,.0f} {rss}{extra}"
            )
        ratio = medians["layerhub"] / medians["GNU tar"]
        worst = max(worst, ratio)
        print(f"{kind:<8} {'ratio':<9} {ratio:>7.2f}x  layerhub/tar (wall time, medians)")
        print()
    print(
        f"MB/s = uncompressed tar MB (10^6 B) per second of wall time; files/s = tar entries "
        f"({layer.entries:,}) per second; {rounds} rounds each; layerhub's wall time includes "
        "Python start-up and imports (the last column leaves them out); peak RSS is the "
        f"median ru_maxrss of the command and its children, via {GNU_TIME} -f %M"
        + ("" if os.access(GNU_TIME, os.X_OK) else " (not installed: n/a)")
        + "."
    )
    return worst


# -- index -------------------------------------------------------------------------------------


def bench_index(
    layer: Layer, work: Path, rounds: int, form: str, cold: bool
) -> dict[tuple[str, str], list[Run]]:
    """apply_layer with and without the file index, alternating, each in a fresh directory."""
    runs: dict[tuple[str, str], list[Run]] = {}
    modes = {"unpack": False, "+index": True}
    serial = 0
    for rnd in range(rounds):
        order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
        for kind, archive in {"tar": layer.tar, "tar.gz": layer.tgz}.items():
            for mode in order:
                serial += 1
                dest = work / f"index-{serial:03d}"
                dest.mkdir()
                if cold:
                    drop_caches()
                else:
                    os.sync()
                run = run_layerhub(archive, dest, form, index=modes[mode])
                runs.setdefault((kind, mode), []).append(run)
                if modes[mode] and run.records < layer.entries - 1:
                    raise RuntimeError(f"the index has {run.records} records, not {layer.entries}")
                shutil.rmtree(dest)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{dest}.index")
                os.sync()
        print(f"  round {rnd + 1}/{rounds} done", flush=True)
    return runs


def report_index(runs: dict[tuple[str, str], list[Run]], rounds: int) -> float:
    """Print the table; return the worst with/without ratio (in-process apply time)."""
    print()
    head = (
        f"{'archive':<8} {'mode':<8} {'apply median':>13} {'wall median':>12} {'write index':>12}"
    )
    print(head)
    print("-" * len(head))
    worst = 0.0
    for kind in ("tar", "tar.gz"):
        medians = {}
        for mode in ("unpack", "+index"):
            rs = runs[(kind, mode)]
            medians[mode] = statistics.median(r.apply_s or 0.0 for r in rs)
            wall = statistics.median(r.wall_s for r in rs)
            write = statistics.median(r.write_s or 0.0 for r in rs)
            print(f"{kind:<8} {mode:<8} {medians[mode]:>11.3f} s {wall:>10.3f} s {write:>10.3f} s")
        ratio = medians["+index"] / medians["unpack"]
        worst = max(worst, ratio)
        print(ratio_line(f"{kind:<8} +index/unpack", medians["+index"], medians["unpack"]))
        print()
    print(
        f"apply = apply_layer in the process (imports left out), medians of {rounds} rounds; "
        "write index = writing the records to a file beside the tree, as an unpacker process "
        "does for its parent (after apply, not in the ratio)."
    )
    return worst


# -- diff --------------------------------------------------------------------------------------


def unpack_base(layer: Layer, root: Path, copies: int) -> list[Path]:
    """``copies`` lower directories, the layer unpacked into each under its own prefix, so
    their union holds ``copies`` times the layer's data (copy 0 at the root)."""
    lowers = []
    for k in range(copies):
        lower = root / f"lower-{k}"
        dest = lower / (f"set-{k}" if k else "")
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xf", str(layer.tar), "-C", str(dest)], check=True)
        lowers.append(lower)
    return lowers


def make_upper(lower: Path, layer: Layer, upper: Path, fmt: WhiteoutFormat) -> None:
    """A writable directory over ``lower``: 100 changed files (50 modified by copy-up, 50 added,
    some in new directories), ~10 KB each, and 5 deletions as whiteouts in the store's form.

    Seeded, so it is the same change over every base: only the base differs between runs.
    """
    rng = random.Random(7)
    upper.mkdir()
    picks = rng.sample(layer.files[BIG_FILES:], 55)  # small files only: copy-up stays ~10 KB

    def copy_up_parents(rel: str) -> Path:
        # parents as overlayfs copy-up makes them: the lower directory's mode and times
        parts = rel.split("/")
        for i in range(1, len(parts)):
            dst, src = upper.joinpath(*parts[:i]), lower.joinpath(*parts[:i])
            if not dst.is_dir():
                dst.mkdir()
                if src.is_dir():
                    shutil.copystat(src, dst)
        return upper / rel

    for rel in picks[:50]:  # modified
        dst = copy_up_parents(rel)
        shutil.copy2(lower / rel, dst)
        with open(dst, "r+b") as f:
            f.write(rng.randbytes(10_000))
    for n in range(50):  # added
        parent = f"new-{n // 10}" if n % 5 == 0 else rng.choice(picks).rsplit("/", 1)[0]
        copy_up_parents(f"{parent}/added-{n:02d}.dat").write_bytes(rng.randbytes(10_000))
    for rel in picks[50:]:  # deleted
        dst = copy_up_parents(rel)
        fmt.write_whiteout(dst.parent, dst.name)


@dataclass
class DiffResult:
    base_bytes: int
    entries: int
    tar_size: int
    runs: dict[str, list[float]]  # tool -> seconds, page cache dropped first (when root)


DIFF_TOOLS = ("layerhub diff_to_store", "tar | gzip (peer)")


def bench_diff(
    layer: Layer, work: Path, rounds: int, fmt: WhiteoutFormat, cold: bool
) -> DiffResult:
    """diff_to_store of an upper directory against its fair peer, ``tar -C upper -c | gzip``
    (what Docker's overlay2 differ does), alternating which goes first, caches dropped the
    same way before each run.
    """
    root = work / "base"
    lowers = unpack_base(layer, root, 1)
    upper = root / "upper"
    make_upper(lowers[0], layer, upper, fmt)
    store = Store(root / "store", whiteouts=fmt.name)
    result = DiffResult(tree_count(lowers[0])[1], 0, 0, {tool: [] for tool in DIFF_TOOLS})
    for rnd in range(rounds):
        order = DIFF_TOOLS if rnd % 2 == 0 else tuple(reversed(DIFF_TOOLS))
        for tool in order:
            if cold:
                drop_caches()
            else:
                os.sync()
            if tool == DIFF_TOOLS[0]:
                start = time.perf_counter()
                diff = diff_to_store(upper, store.whiteouts, store.blobs)
                elapsed = time.perf_counter() - start
                result.entries, result.tar_size = diff.entry_count, diff.tar_size
                store.blobs.delete(diff.digest)  # the next run writes it again
            else:
                blob = root / f"peer-{rnd}.tar.gz"
                elapsed = tar_gzip_blob(upper, blob)
                blob.unlink()
            result.runs[tool].append(elapsed)
    shutil.rmtree(root)
    os.sync()
    return result


def report_diff(result: DiffResult, cold: bool) -> float:
    """Print the table; return layerhub's median."""
    print()
    print(f"{'tool':<24} {'median':>9} {'min':>8} {'max':>8}")
    print("-" * 52)
    medians = {}
    for tool, times in result.runs.items():
        medians[tool] = statistics.median(times)
        print(f"{tool:<24} {medians[tool]:>7.3f} s {min(times):>6.3f} s {max(times):>6.3f} s")
    print(ratio_line("ratio layerhub/peer (medians)", *medians.values()))
    print(
        f"{result.entries} entries, a {result.tar_size / MB:.2f} MB tar, over a base of "
        f"{result.base_bytes / MB:,.0f} MB; "
        + ("caches dropped before every run" if cold else "warm caches (not root)")
        + "; the peer's time includes the blob's sha256 and an fsync, as layerhub's does."
    )
    return medians[DIFF_TOOLS[0]]


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--files", type=int, default=20_000, help="files in the layer")
    parser.add_argument("--dirs", type=int, default=400, help="directories in the layer")
    parser.add_argument("--tmp", type=Path, default=None, help="where to work (default: $TMPDIR)")
    parser.add_argument(
        "--index-only", action="store_true", help="only unpack with vs without the file index"
    )
    args = parser.parse_args()

    compile_project()
    cold = os.geteuid() == 0 and drop_caches()
    print("layerhub engine benchmark")
    print(f"  nproc:   {len(os.sched_getaffinity(0))}")
    print(f"  python:  {platform.python_version()} ({sys.executable})")
    print(f"  kernel:  {platform.release()}")
    print(f"  tar:     {tool_version(['tar', '--version'])}")
    print(f"  gzip:    {tool_version(['gzip', '--version'])}")
    if cold:
        print("  caches:  sync; echo 3 > /proc/sys/vm/drop_caches before every timed run")
    else:
        why = "not root" if os.geteuid() != 0 else "/proc/sys/vm/drop_caches is not writable"
        print(f"  caches:  NOT dropped ({why}): timings are warm-cache, sync only")

    work = Path(tempfile.mkdtemp(prefix="layerhub-bench-", dir=args.tmp))
    try:
        fmt = default_format(work)
        print(f"  workdir: {work} ({os.statvfs(work).f_bsize} B blocks), whiteouts: {fmt.name}")
        print()
        t0 = time.perf_counter()
        layer = generate_layer(work, args.files, args.dirs)
        print(
            f"generated layer: {len(layer.files):,} files ({BIG_FILES} of 1 MiB, the rest "
            f"{SMALL_SIZES[0]} B-{SMALL_SIZES[1] // 1024} KiB, half text, half random), "
            f"{layer.dirs} directories, {layer.content_bytes / MB:,.0f} MB of content; "
            f"tar {layer.tar_size / MB:,.0f} MB, gzip {layer.tgz.stat().st_size / MB:,.0f} MB "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        # the tree was needed only to make the tar
        shutil.rmtree(layer.src)

        print()
        print(f"== index: apply_layer with vs without the file index ({fmt.name} whiteouts)")
        index_worst = report_index(
            bench_index(layer, work, args.rounds, fmt.name, cold), args.rounds
        )
        verdict = "yes" if index_worst <= INDEX_LIMIT else "NO"
        print(
            f"index: adds at most {INDEX_LIMIT - 1:.0%} to unpack time: {verdict} "
            f"(worst ratio {index_worst:.2f}x)"
        )
        if args.index_only:
            return

        print()
        print(f"== apply: GNU tar -xf / -xzf vs layerhub apply_layer ({fmt.name} whiteouts)")
        runs = bench_apply(layer, work, args.rounds, fmt.name, cold)
        worst = report_apply(layer, runs, args.rounds)

        print()
        print(
            "== diff: diff_to_store of 100 changed files (~10 KB each: 50 modified, 50 added) "
            f"and 5 deletions vs tar -C upper -c | gzip -6, {args.rounds} runs each (the base "
            "is unpacked with GNU tar, not timed)"
        )
        diff_median = report_diff(bench_diff(layer, work, args.rounds, fmt, cold), cold)

        print()
        verdict = "yes" if worst <= 2.0 else "NO"
        print(f"apply: within 2x of GNU tar: {verdict} (worst ratio layerhub/tar {worst:.2f}x)")
        under = "yes" if diff_median < DIFF_TARGET_S else "NO"
        print(f"diff: under {DIFF_TARGET_S} s: {under} (median {diff_median:.3f} s)")
        print(
            "diff and base size, by design (not measured): diff_to_store(upper, whiteouts, "
            "blobs) is given only the upper directory and never opens the base, so the size "
            "of the base cannot change its time; timing it over bigger bases could not fail."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
