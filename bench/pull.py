"""Pull benchmark, run on demand: ``.venv/bin/python bench/pull.py [--rounds N]``.

Against the CNCF registry on loopback (started here, seeded with skopeo):

1. cold pull (download and verify every blob) of an image of about 300 MB in several layers:
   layerhub's engine pull into an empty store vs ``skopeo copy docker://... oci:...`` into an
   empty layout, alternating, caches dropped before each run (when root); medians and ratio;
2. warm pull: the same pull into a store that has every layer (manifest and config only);
3. memory: peak RSS of the pulling process for a 100 MB layer and a 1 GB layer: a streaming
   pull stays flat as layers grow.

layerhub pulls in a child process (the engine, as a worker runs it) so that its peak RSS can be
measured with GNU time; its wall time includes Python start-up, so the child's own pull time is
printed too. Nothing is hard-coded: every verdict is computed from this run's medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import Run, drop_caches, run_measured, tool_version  # noqa: E402
from tests.support.registry import run_registry  # noqa: E402

MB = 1_000_000
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

PULL_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
from layerhub.engine import pull
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import RegistryClient
from layerhub.engine.store import Store
t1 = time.perf_counter()
ref = parse_reference(sys.argv[1])
client = RegistryClient(ref.registry)
image = pull.pull(client, ref, Store(Path(sys.argv[2])))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "pull_s": t2 - t1, "layers": len(image.manifest.layers)}))
"""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def add_blob(layout: Path, path: Path) -> tuple[str, int]:
    digest = sha256_file(path)
    target = layout / "blobs" / "sha256" / digest.split(":")[1]
    shutil.move(path, target)
    return digest, target.stat().st_size


def make_layer(work: Path, layout: Path, name: str, size: int, gzip: bool) -> dict[str, object]:
    """A layer holding one file of ``size`` random bytes; its descriptor and DiffID."""
    src = work / f"{name}.bin"
    with open(src, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n
    tar = work / f"{name}.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname=f"data/{name}.bin")
    src.unlink()
    diff_id = sha256_file(tar)
    blob = tar
    if gzip:
        subprocess.run(["gzip", "-1", "-n", str(tar)], check=True)
        blob = tar.with_suffix(".tar.gz")
    digest, blob_size = add_blob(layout, blob)
    return {
        "mediaType": LAYER_GZIP if gzip else LAYER_TAR,
        "digest": digest,
        "size": blob_size,
        "diff_id": diff_id,
    }


def add_image(layout: Path, work: Path, tag: str, layers: list[dict[str, object]]) -> None:
    config = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
    }
    config_path = work / "config.json"
    config_path.write_text(json.dumps(config))
    config_digest, config_size = add_blob(layout, config_path)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{k: v for k, v in layer.items() if k != "diff_id"} for layer in layers],
    }
    manifest_path = work / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    digest, size = add_blob(layout, manifest_path)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    index_path.write_text(json.dumps(index))


def new_layout(path: Path) -> Path:
    (path / "blobs" / "sha256").mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    return path


def pull_layerhub(ref: str, store: Path) -> tuple[Run, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run, out = run_measured(
        [sys.executable, "-c", PULL_CHILD, ref, str(store)], store.with_suffix(".rss"), env
    )
    return run, json.loads(out)


def pull_skopeo(ref: str, dest: Path) -> Run:
    cmd = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}"]
    return run_measured([*cmd, f"oci:{dest}:bench"], dest.with_suffix(".rss"))[0]


WORKER_BROKER = "redis://127.0.0.1:6379/13"


def _peak_kib(pid: int) -> int:
    """VmHWM: the process's peak resident memory so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def worker_memory(host: str, work: Path) -> tuple[dict[str, int], list[float]] | None:
    """Pull and unpack the two memory images through a real worker: its peak RSS after each,
    and the wall times of warm ``manage.py pull`` runs of the small one (every layer already in
    the store: the command, the worker's pull and unpack jobs, and following them)."""
    import redis

    try:
        redis.Redis.from_url(WORKER_BROKER, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return None
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'worker.sqlite3'}",
        "LAYERHUB_STORE": str(work / "worker-store"),
        "REDIS_URL": WORKER_BROKER,
        # a queue of this run's own: nothing else's jobs are taken, nothing is flushed
        "LAYERHUB_QUEUE": f"layerhub-bench-{os.getpid()}",
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=REPO, env=env, check=True)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "-P", "solo", "-l", "error"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "worker.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    peaks: dict[str, int] = {}
    warm: list[float] = []

    def pull(tag: str) -> float:
        started = time.perf_counter()
        subprocess.run(
            [*manage, "pull", f"{host}/bench/{tag}:{tag}"],
            cwd=REPO,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - started

    try:
        for tag in ("mem-small", "mem-big"):
            pull(tag)
            peaks[tag] = _peak_kib(worker.pid)
        warm = [pull("mem-small") for _ in range(7)]
    finally:
        worker.terminate()
        worker.wait(60)
        _delete_queue(WORKER_BROKER, env["LAYERHUB_QUEUE"])
    return peaks, warm


def _delete_queue(url: str, queue: str) -> None:
    """Remove this run's queue keys (and nothing else) from the broker."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    keys = list(client.scan_iter(match=f"{queue}*")) + list(client.scan_iter(match=f"*{queue}"))
    if keys:
        client.delete(*keys)


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def print_flat(what: str, big_mb: int, small_kib: int, big_kib: int) -> None:
    """The memory verdict: flat (within 20%) from the small to the big layer, under 200 MB."""
    flat = big_kib <= small_kib * 1.2 and big_kib < 200 * 1024
    print(
        f"{what}: flat and under 200 MB for a {big_mb} MB layer: "
        f"{'yes' if flat else 'no'} ({mib(small_kib)} -> {mib(big_kib)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4, help="layers of the cold-pull image")
    parser.add_argument("--layer-mb", type=int, default=75, help="MB of each of those layers")
    parser.add_argument("--big-mb", type=int, default=1000, help="MB of the memory test layer")
    parser.add_argument("--tmp", default=None, help="where to work (default: system temp)")
    args = parser.parse_args()
    if not shutil.which("skopeo") or not shutil.which("docker-registry"):
        sys.exit("bench/pull.py needs skopeo and docker-registry (Debian packages)")

    print("layerhub pull benchmark")
    print(f"  nproc:   {os.cpu_count()}")
    print(f"  python:  {platform.python_version()}")
    print(f"  skopeo:  {tool_version(['skopeo', '--version'])}")
    print(f"  registry: {tool_version(['docker-registry', '--version'])}")
    cold = drop_caches()
    print(f"  caches:  {'dropped before every timed run' if cold else 'NOT dropped (not root)'}")

    work = Path(tempfile.mkdtemp(prefix="layerhub-pull-bench-", dir=args.tmp))
    try:
        layout = new_layout(work / "layout")
        layers = [
            make_layer(work, layout, f"l{i}", args.layer_mb * MB, gzip=True)
            for i in range(args.layers)
        ]
        add_image(layout, work, "big-image", layers)
        small = make_layer(work, layout, "mem-small", 100 * MB, gzip=False)
        add_image(layout, work, "mem-small", [small])
        big = make_layer(work, layout, "mem-big", args.big_mb * MB, gzip=False)
        add_image(layout, work, "mem-big", [big])
        total = sum(int(str(layer["size"])) for layer in layers)
        print(f"  image:   {args.layers} gzip layers, {total / MB:.0f} MB compressed")

        with run_registry(work / "registry") as registry:
            for tag in ("big-image", "mem-small", "mem-big"):
                registry.push_layout(layout, tag, f"bench/{tag}")
            ref = f"{registry.host}/bench/big-image:big-image"
            layerhub_runs: list[Run] = []
            child_pull: list[float] = []
            skopeo_runs: list[Run] = []
            warm_runs: list[Run] = []
            warm_child: list[float] = []
            for n in range(args.rounds):
                order = ("layerhub", "skopeo") if n % 2 == 0 else ("skopeo", "layerhub")
                for tool in order:
                    dest = work / f"{tool}-{n}"
                    drop_caches()
                    if tool == "layerhub":
                        run, report = pull_layerhub(ref, dest)
                        layerhub_runs.append(run)
                        child_pull.append(report["pull_s"])
                        drop_caches()
                        warm, warm_report = pull_layerhub(ref, dest)
                        warm_runs.append(warm)
                        warm_child.append(warm_report["pull_s"])
                    else:
                        skopeo_runs.append(pull_skopeo(ref, dest))
                    shutil.rmtree(dest, ignore_errors=True)
                print(f"  round {n + 1}/{args.rounds} done", flush=True)

            memory: dict[str, Run] = {}
            for tag in ("mem-small", "mem-big"):
                dest = work / f"memory-{tag}"
                drop_caches()
                memory[tag] = pull_layerhub(f"{registry.host}/bench/{tag}:{tag}", dest)[0]
                shutil.rmtree(dest, ignore_errors=True)
            worker_peaks = worker_memory(registry.host, work)

        def med(runs: list[Run]) -> float:
            return statistics.median(r.wall_s for r in runs)

        def med_rss(runs: list[Run]) -> int | None:
            values = [r.maxrss_kib for r in runs if r.maxrss_kib is not None]
            return int(statistics.median(values)) if values else None

        ratio = med(layerhub_runs) / med(skopeo_runs)
        print()
        print("== cold pull (download and verify), medians of", args.rounds, "rounds")
        print(f"{'tool':10} {'wall':>9} {'MB/s':>8} {'peak RSS':>10}   in-process pull")
        for name, runs in (("skopeo", skopeo_runs), ("layerhub", layerhub_runs)):
            extra = f"   {statistics.median(child_pull):.2f} s" if name == "layerhub" else ""
            print(
                f"{name:10} {med(runs):8.2f}s {total / MB / med(runs):8.1f} "
                f"{mib(med_rss(runs)):>10}{extra}"
            )
        print(f"ratio layerhub/skopeo: {ratio:.2f}x (wall time, medians)")
        print()
        print("== warm pull (every layer already in the store)")
        print(
            f"layerhub: {med(warm_runs):.2f} s wall with Python start-up, "
            f"{statistics.median(warm_child):.3f} s in-process"
        )
        print()
        print("== memory of the pulling process (one uncompressed layer)")
        for tag, size in (("mem-small", 100), ("mem-big", args.big_mb)):
            print(f"{size:>6} MB layer: peak RSS {mib(memory[tag].maxrss_kib)}")
        print()
        print(f"cold pull: within 1.2x of skopeo: {'yes' if ratio <= 1.2 else 'no'} ({ratio:.2f}x)")
        warm_s = statistics.median(warm_child)
        print(
            f"warm pull: under 0.5 s: {'yes' if warm_s < 0.5 else 'no'} ({warm_s:.3f} s in-process)"
        )
        small_rss, big_rss = memory["mem-small"].maxrss_kib, memory["mem-big"].maxrss_kib
        if small_rss and big_rss:
            print_flat("memory", args.big_mb, small_rss, big_rss)
        if worker_peaks is None:
            print("worker: not measured (no Redis at " + WORKER_BROKER + ")")
        else:
            peaks, warm_cli = worker_peaks
            print()
            print("== a real worker (celery -P solo: Django, Celery, pull and unpack jobs)")
            for tag, peak in peaks.items():
                print(f"after pulling and unpacking {tag}: worker peak RSS {mib(peak)}")
            print_flat("worker memory", args.big_mb, peaks["mem-small"], peaks["mem-big"])
            cli_s = statistics.median(warm_cli)
            print(
                f"warm `manage.py pull` through the worker: {cli_s:.2f} s wall, median of "
                f"{len(warm_cli)} (min {min(warm_cli):.2f}, max {max(warm_cli):.2f}); "
                f"under 1 s: {'yes' if cli_s < 1 else 'no'}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
