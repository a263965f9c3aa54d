"""Commit benchmark, run on demand: ``.venv/bin/python bench/commit.py [--rounds N]``.

Commit 10 MB of changes (added and modified files, a few deletions) over base images of about
100 MB and about 1 GB, timed side by side in the same run, caches dropped the same way before
each timed run (when root), the order rotated every round; medians and ratios:

- layerhub's ``commit_container`` (deterministic diff of the writable layer, gzip, store,
  unpack as the new snapshot, config and manifest), and its ``diff_to_store`` part alone;
- the fair peer, doing the same work: ``tar -C upper -c | gzip`` into a stored blob (what
  Docker's overlay2 differ does with a container's upper directory);
- ``umoci repack`` of the same change in an umoci bundle of the same image: a structural
  comparison (umoci has no writable layer and must walk the whole rootfs), labelled as such.

That commit's time does not depend on the base's size is a property of the design (the base is
never read), printed as such and not as a measured verdict.
"""

from __future__ import annotations

import argparse
import hashlib
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import compile_project, drop_caches, ratio_line, tar_gzip_blob, tool_version  # noqa: E402
from layerhub.engine.commit import commit_container  # noqa: E402
from layerhub.engine.diff import diff_to_store  # noqa: E402
from layerhub.engine.digest import sha256_bytes  # noqa: E402
from layerhub.engine.manifest import ImageManifest, parse_manifest  # noqa: E402
from layerhub.engine.store import Store  # noqa: E402

MB = 1_000_000
COMMIT = "layerhub commit"
DIFF = "layerhub diff"
PEER = "tar | gzip"
UMOCI = "umoci repack"
TOOLS = (COMMIT, DIFF, PEER, UMOCI)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def make_base(work: Path, name: str, size: int, seed: int) -> Path:
    """A base layer tree: many files of 10-500 KB up to ``size`` bytes, half random."""
    root = work / f"{name}-tree"
    rng = random.Random(seed)
    written = 0
    n = 0
    while written < size:
        d = root / f"usr/lib/pkg{n // 200}"
        d.mkdir(parents=True, exist_ok=True)
        length = rng.randint(10_000, 500_000)
        data = os.urandom(length) if n % 2 else bytes(rng.choices(b"abcdef \n", k=length))
        (d / f"f{n}.so").write_bytes(data)
        written += length
        n += 1
    (root / "etc").mkdir()
    for i in range(50):
        (root / "etc" / f"conf{i}").write_bytes(b"setting=1\n" * 10)
    return root


def layout_for(work: Path, tree: Path, name: str) -> tuple[Path, str]:
    """An OCI layout holding one image whose single layer is ``tree``."""
    layout = work / f"{name}-layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = work / f"{name}.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(tree), "--sort=name", "."], check=True)
    diff_id = "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()
    subprocess.run(["gzip", "-1", "-n", str(tar)], check=True)
    gz = tar.with_suffix(".tar.gz")
    layer_digest = "sha256:" + hashlib.sha256(gz.read_bytes()).hexdigest()
    layer_size = gz.stat().st_size
    shutil.move(gz, blobs / layer_digest.split(":")[1])
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "base"}],
        }
    ).encode()
    (blobs / sha256_bytes(config).split(":")[1]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256_bytes(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer_digest,
                    "size": layer_size,
                }
            ],
        }
    ).encode()
    (blobs / sha256_bytes(manifest).split(":")[1]).write_bytes(manifest)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": OCI_MANIFEST,
                        "digest": sha256_bytes(manifest),
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "base"},
                    }
                ],
            }
        )
    )
    return layout, sha256_bytes(manifest)


def change(root: Path, seed: int, tree_files: list[str], whiteout: bool, fmt: Store) -> None:
    """10 MB of changes at ``root``: 50 new files, 50 modified files, 5 deletions.

    In a writable layer (``whiteout``) the deletions are whiteouts and the modified files'
    parents are copied up; in a bundle rootfs they are plain deletions and overwrites.
    """
    rng = random.Random(seed)
    (root / "srv/new").mkdir(parents=True, exist_ok=True)
    for i in range(50):
        (root / "srv/new" / f"n{i}").write_bytes(rng.randbytes(100_000))
    for rel in tree_files[:50]:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(100_000))
    for rel in tree_files[50:55]:
        if whiteout:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            fmt.whiteouts.write_whiteout(root / rel.rsplit("/", 1)[0], rel.rsplit("/", 1)[1])
        else:
            (root / rel).unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small-mb", type=int, default=100)
    parser.add_argument("--big-mb", type=int, default=1000)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    if not shutil.which("umoci"):
        sys.exit("bench/commit.py needs umoci (Debian package)")
    print("layerhub commit benchmark")
    umoci = tool_version(["umoci", "--version"])
    print(f"  nproc: {os.cpu_count()}, python {platform.python_version()}, {umoci}")
    compile_project()
    cold = drop_caches()
    print(f"  caches: {'dropped before every timed run' if cold else 'NOT dropped (not root)'}")
    work = Path(tempfile.mkdtemp(prefix="layerhub-commit-bench-", dir=args.tmp))
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for name, size, seed in (("small", args.small_mb * MB, 1), ("big", args.big_mb * MB, 2)):
            tree = make_base(work, name, size, seed)
            files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.so"))
            random.Random(seed).shuffle(files)
            layout, manifest_digest = layout_for(work, tree, name)
            store = Store(work / f"{name}-store")
            blobs = layout / "blobs" / "sha256"
            for blob in blobs.iterdir():
                store.blobs.put_bytes(blob.read_bytes())
            manifest = parse_manifest((blobs / manifest_digest.split(":")[1]).read_bytes())
            assert isinstance(manifest, ImageManifest)
            config = store.blobs.read_bytes(manifest.config.digest)
            diff_id = json.loads(config)["rootfs"]["diff_ids"][0]
            with store.blobs.open(manifest.layers[0].digest) as f:
                store.snapshots.unpack(diff_id, f, diff_id=diff_id)
            bundle = work / f"{name}-bundle"
            subprocess.run(
                ["umoci", "unpack", "--image", f"{layout}:base", str(bundle)],
                check=True,
                capture_output=True,
            )
            shutil.rmtree(tree)
            times: dict[str, list[float]] = {tool: [] for tool in TOOLS}
            print(f"  base {name}: {size / MB:.0f} MB in {len(files)} files", flush=True)
            for n in range(args.rounds):
                # rotate which tool goes first, so writeback and cache effects fall on all alike
                order = TOOLS[n % len(TOOLS) :] + TOOLS[: n % len(TOOLS)]
                for tool in order:
                    times[tool].append(
                        timed_run(
                            tool, work, name, n, files, store, manifest, config, layout, bundle
                        )
                    )
            results[name] = times
            print(f"  {name}: {args.rounds} rounds done", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.rounds, cold)


def timed_run(
    tool: str,
    work: Path,
    name: str,
    n: int,
    files: list[str],
    store: Store,
    manifest: ImageManifest,
    config: bytes,
    layout: Path,
    bundle: Path,
) -> float:
    """One timed run of ``tool`` on a fresh copy of round ``n``'s change (set up untimed)."""
    if tool == UMOCI:
        copy = work / f"{name}-bundle-{n}"
        subprocess.run(["cp", "-a", str(bundle), str(copy)], check=True)
        change(copy / "rootfs", 100 + n, files, False, store)
        drop_caches()
        start = time.perf_counter()
        subprocess.run(
            ["umoci", "repack", "--image", f"{layout}:r{n}", str(copy)],
            check=True,
            capture_output=True,
        )
        elapsed = time.perf_counter() - start
        shutil.rmtree(copy)
        return elapsed
    upper = work / f"{name}-upper-{n}-{TOOLS.index(tool)}"
    upper.mkdir()
    change(upper, 100 + n, files, True, store)
    drop_caches()
    if tool == COMMIT:
        start = time.perf_counter()
        commit_container(
            store, upper, store.whiteouts, parent_manifest=manifest, parent_config=config
        )
        elapsed = time.perf_counter() - start
    elif tool == DIFF:
        scratch = Store(work / f"{name}-scratch")
        start = time.perf_counter()
        diff_to_store(upper, scratch.whiteouts, scratch.blobs)
        elapsed = time.perf_counter() - start
        shutil.rmtree(scratch.root)
    else:
        elapsed = tar_gzip_blob(upper, work / f"{name}-peer.tar.gz")
        (work / f"{name}-peer.tar.gz").unlink()
    shutil.rmtree(upper)
    return elapsed


def report(results: dict[str, dict[str, list[float]]], rounds: int, cold: bool) -> None:
    """Medians per base and tool, ratios against the fair peer, and what is by design."""
    print()
    print("== commit of 10 MB of changes (50 added, 50 modified files of 100 KB, 5 deleted)")
    print(
        f"   medians of {rounds} rounds; "
        + ("caches dropped before every timed run" if cold else "warm caches (not root)")
    )
    med = {base: {t: statistics.median(v) for t, v in r.items()} for base, r in results.items()}
    print(f"{'base':8} " + " ".join(f"{t:>{len(t) + 2}}" for t in TOOLS))
    for base, m in med.items():
        print(f"{base:8} " + " ".join(f"{m[t]:>{len(t) + 1}.3f}s" for t in TOOLS))
    print()
    print("fair comparison (the same work: tar the upper directory, gzip, store the blob):")
    for base, m in med.items():
        print(
            "  " + ratio_line(f"{base} base, layerhub diff_to_store / tar | gzip", m[DIFF], m[PEER])
        )
        print("  " + ratio_line(f"{base} base, layerhub commit / tar | gzip", m[COMMIT], m[PEER]))
    print(
        "  (commit also unpacks the new layer as its snapshot and writes config and manifest; "
        "the peer does not, so commit/peer includes that extra work)"
    )
    print()
    print("structural comparison (not the same work): umoci repack")
    for base, m in med.items():
        print(
            "  " + ratio_line(f"{base} base, layerhub commit / umoci repack", m[COMMIT], m[UMOCI])
        )
    print(
        "  umoci keeps no writable layer: repack walks the whole unpacked rootfs and compares it "
        "with the mtree manifest to find the change, so its time grows with the base."
    )
    print()
    worst = max(m[COMMIT] for m in med.values())
    verdict = "yes" if worst < 1 else "no"
    print(f"commit under 1 s for the 10 MB change: {verdict} (worst median {worst:.3f} s)")
    print(
        "commit and base size, by design (not measured): commit_container is given the upper "
        "directory and the parent's config and never opens the base's files, so the base's "
        "size cannot change its time. A gap between the two bases' rows is the machine's "
        "(writeback, page cache), which the peer, which never sees the base either, shares."
    )


if __name__ == "__main__":
    main()
