"""Pull benchmark, run on demand: ``.venv/bin/python bench/pull.py [--rounds N]``.

Needs, from Debian: ``docker-registry`` and ``skopeo`` (the loopback registry and seeding it),
``podman`` (``apt-get install podman``: the peer), ``umoci`` and GNU tar; run as root so the
page cache can be dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) before every timed
run, whichever tool it is.

1. cold pull plus unpack of an image like debian:bookworm's (five gzip layers, ~217 MB
   unpacked, ~12.9k entries, ~90 MB compressed) from a CNCF registry on loopback, side by
   side, the order rotating every round: layerhub's engine pull (a child process, as a
   worker runs it: download, verify, unpack every layer, one flush) against ``podman pull``
   (``--root``/``--runroot`` in a temporary directory, ``--storage-driver overlay``),
   ``skopeo copy`` + ``umoci unpack``, and the floor: the sum of GNU ``tar -xzf`` over the
   five blobs already on disk (no download, no verification);
2. unpack alone of one generated 200 MB layer (20,000 files, gzip): layerhub's
   ``apply_layer`` against ``tar -xzf``;
3. warm pull (every layer already in the store);
4. inflate CPU: the five blobs through the standard library's gzip and ISA-L's (layerhub's);
5. memory: peak RSS of the pulling process for a 100 MB and a 1 GB layer, and of a real
   worker (``celery -P solo``) pulling and unpacking them, when Redis answers.

Every figure is a median over the rounds of this run, every verdict computed from them.

What each timed run writes is kept until sections 1 and 2 are over, then deleted, when the
disk has room for it (``--delete-between`` deletes each at once instead). On ext4 without
a journal, as this machine's root file system is, creating a file first skips every free
inode deleted in the last minute or more (ext4's ``recently_deleted``), one lookup each: a
run that follows the deletion of another's 13,000 files pays for that deletion, more or
less by where the allocator puts its directories, whichever tool it is. Kept, no run pays
for another's clean-up.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import random
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

from bench._common import Run, compile_project, drop_caches, run_measured, tool_version  # noqa: E402
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
assert all(layer.present for layer in image.layers), image.layers
print(json.dumps({"import_s": t1 - t0, "pull_s": t2 - t1, "layers": len(image.manifest.layers)}))
"""

APPLY_CHILD = """
import json, sys, time
from pathlib import Path
from layerhub.engine.apply import apply_layer
from layerhub.engine.whiteouts import format_named
t0 = time.perf_counter()
with open(sys.argv[1], "rb") as f:
    apply_layer(f, Path(sys.argv[2]), whiteouts=format_named("oci"))
print(json.dumps({"apply_s": time.perf_counter() - t0}))
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


# An image like debian:bookworm's (5 gzip layers, ~217 MB unpacked, ~12.9k entries, ~90 MB
# compressed): (files, MB of content) per layer, bottom first.
DEBIAN_LIKE = ((7_200, 120), (3_000, 50), (1_600, 27), (600, 12), (300, 8))


def _text_pool(rng: random.Random, size: int) -> bytes:
    """Compressible bytes, as text and code are: lines from a small vocabulary."""
    words = [
        "".join(rng.choice("etaoinshrdlucmfwypvbgkjqxz_") for _ in range(rng.randint(2, 10)))
        for _ in range(2_000)
    ]
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf, as words in text are
    out: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, weights, k=rng.randint(3, 14))) + "\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def _tree_tar(path: Path, rng: random.Random, pool: bytes, files: int, content: int) -> None:
    """A layer tar of ``files`` files holding about ``content`` bytes in directories of about
    20 files: most files small (100 B to 32 KiB, as in /usr/share and /etc), the rest of
    the bytes in a few large ones (as shared libraries are); about one file in eight
    incompressible (gzip -6 then gives about what Debian's layers give)."""
    small = [int(math.exp(rng.uniform(math.log(100), math.log(32 * 1024)))) for _ in range(files)]
    big_count = max(1, files // 100)
    left = max(content - sum(small[big_count:]), big_count * 4096)
    sizes = [left // big_count] * big_count + small[big_count:]
    rng.shuffle(sizes)
    dirs = [f"usr/d{i // 20:03d}/s{i % 7}" for i in range(0, files, 20)]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        made: set[str] = set()
        for i, size in enumerate(sizes):
            folder = dirs[i // 20]
            parts = folder.split("/")
            for depth in range(1, len(parts) + 1):
                sub = "/".join(parts[:depth])
                if sub not in made:
                    made.add(sub)
                    info = tarfile.TarInfo(sub)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
                    tf.addfile(info)
            if rng.random() < 0.12:
                data = rng.randbytes(size)
            else:
                start = rng.randrange(max(1, len(pool) - size))
                data = pool[start : start + size]
            info = tarfile.TarInfo(f"{folder}/f{i:05d}")
            info.size, info.mtime = len(data), 1_700_000_000
            info.mode = 0o755 if i % 10 == 0 else 0o644
            tf.addfile(info, io.BytesIO(data))


def debian_like_layers(work: Path, layout: Path) -> list[dict[str, object]]:
    """The layers of DEBIAN_LIKE, gzip -6, added to ``layout``."""
    rng = random.Random(13)
    pool = _text_pool(rng, 16 * MB)
    layers = []
    for n, (files, content_mb) in enumerate(DEBIAN_LIKE):
        tar = work / f"debian-{n}.tar"
        _tree_tar(tar, rng, pool, files, content_mb * MB)
        diff_id = sha256_file(tar)
        subprocess.run(["gzip", "-6", "-n", str(tar)], check=True)
        digest, size = add_blob(layout, tar.with_suffix(".tar.gz"))
        layers.append({"mediaType": LAYER_GZIP, "digest": digest, "size": size, "diff_id": diff_id})
    return layers


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


def podman(root: Path, *args: str) -> list[str]:
    # podman refuses a runroot path longer than 50 characters: a short one of its own
    runroot = Path("/tmp") / f"lh-podman-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"
    return [
        "podman",
        "--root",
        str(root / "root"),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "overlay",
        *args,
    ]


def pull_podman(ref: str, dest: Path) -> Run:
    cmd = podman(dest, "pull", "--quiet", "--tls-verify=false", ref)
    return run_measured(cmd, dest.with_suffix(".rss"))[0]


def podman_clean(dest: Path) -> None:
    subprocess.run(podman(dest, "system", "reset", "--force"), capture_output=True, check=False)
    shutil.rmtree(podman(dest)[4], ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)


class Outputs:
    """The timed runs' output directories: kept until ``clean`` when the disk has room for
    them (see the module's docstring), else deleted as soon as each run is measured."""

    # per round: layerhub (blobs, trees), podman, skopeo+umoci, tar; and the two unpacks
    BYTES_PER_ROUND = 1_600 * MB

    def __init__(self, work: Path, rounds: int, *, delete_between: bool) -> None:
        need = rounds * self.BYTES_PER_ROUND
        free = shutil.disk_usage(work).free
        self.between = delete_between or free < 2 * need
        self._kept: list[tuple[Path, bool]] = []
        if delete_between:
            self.policy = "each run's deleted after it (--delete-between)"
        elif self.between:
            self.policy = (
                f"each run's deleted after it: {free / 1e9:.1f} GB free, keeping them all "
                f"needs {need / 1e9:.1f} GB (a run may pay for the one before's deletion)"
            )
        else:
            self.policy = "kept until the unpack runs are over, then deleted"

    def keep(self, dest: Path, *, podman: bool = False) -> None:
        self._kept.append((dest, podman))
        if self.between:
            self.clean()

    def clean(self) -> None:
        for dest, is_podman in self._kept:
            if is_podman:
                podman_clean(dest)
            shutil.rmtree(dest, ignore_errors=True)
        self._kept.clear()
        os.sync()


def pull_umoci(ref: str, dest: Path) -> Run:
    """skopeo copy into an OCI layout, then umoci unpack of it: one timed shell."""
    script = (
        f"skopeo copy --quiet --src-tls-verify=false docker://{ref} oci:{dest}/layout:bench"
        f" && umoci unpack --image {dest}/layout:bench {dest}/bundle"
    )
    return run_measured(["sh", "-c", script], dest.with_suffix(".rss"))[0]


def tar_floor(blobs: list[Path], dest: Path) -> float:
    """The sum of ``tar -xzf`` of each blob into its own directory (caches dropped once)."""
    total = 0.0
    for n, blob in enumerate(blobs):
        target = dest / f"layer-{n}"
        target.mkdir(parents=True)
        started = time.perf_counter()
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(target)], check=True)
        total += time.perf_counter() - started
    return total


def inflate_cpu(blobs: list[Path], rounds: int) -> dict[str, list[float]]:
    """CPU seconds (this thread's, so a busy machine counts less) to inflate the blobs, with the
    standard library's gzip and with ISA-L's (what layerhub's reader uses), alternating."""
    import gzip

    from isal import igzip

    readers = {"ISA-L (layerhub)": igzip.GzipFile, "gzip (standard library)": gzip.GzipFile}
    times: dict[str, list[float]] = {name: [] for name in readers}
    for n in range(rounds):
        for name in list(readers)[:: 1 if n % 2 == 0 else -1]:
            started = time.thread_time()
            for blob in blobs:
                with open(blob, "rb") as raw, readers[name](fileobj=raw, mode="rb") as f:
                    while f.read(1 << 20):
                        pass
            times[name].append(time.thread_time() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=1000, help="MB of the memory test layer")
    parser.add_argument("--tmp", default=None, help="where to work (default: system temp)")
    parser.add_argument("--skip-memory", action="store_true", help="leave out section 5")
    parser.add_argument(
        "--delete-between",
        action="store_true",
        help="delete each timed run's output at once (see the docstring)",
    )
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry", "podman", "umoci", "tar"):
        if not shutil.which(tool):
            sys.exit(f"bench/pull.py needs {tool} (Debian package; see the docstring)")

    print("layerhub pull benchmark")
    print(f"  nproc:   {os.cpu_count()}")
    print(f"  python:  {platform.python_version()}")
    for tool in ("podman", "skopeo", "umoci", "tar", "docker-registry"):
        print(f"  {tool + ':':9} {tool_version([tool, '--version'])}")
    compile_project()
    cold = drop_caches()
    print(f"  caches:  {'dropped before every timed run' if cold else 'NOT dropped (not root)'}")

    work = Path(tempfile.mkdtemp(prefix="layerhub-pull-bench-", dir=args.tmp))
    outputs: Outputs | None = None
    try:
        layout = new_layout(work / "layout")
        layers = debian_like_layers(work, layout)
        add_image(layout, work, "debian", layers)
        blobs = [
            layout / "blobs" / "sha256" / str(layer["digest"]).split(":")[1] for layer in layers
        ]
        total = sum(int(str(layer["size"])) for layer in layers)
        print(
            f"  image:   {len(layers)} gzip layers, {total / MB:.0f} MB compressed, "
            f"{sum(f for f, _ in DEBIAN_LIKE):,} files, {sum(m for _, m in DEBIAN_LIKE)} MB "
            "of content"
        )
        one = work / "one"
        one.mkdir()
        rng = random.Random(200)
        _tree_tar(one / "layer.tar", rng, _text_pool(rng, 16 * MB), 20_000, 200 * MB)
        subprocess.run(["gzip", "-6", "-n", str(one / "layer.tar")], check=True)
        single = one / "layer.tar.gz"
        print(f"  layer:   20,000 files, 200 MB, {single.stat().st_size / MB:.0f} MB gzip")
        if not args.skip_memory:
            small = make_layer(work, layout, "mem-small", 100 * MB, gzip=False)
            add_image(layout, work, "mem-small", [small])
            big = make_layer(work, layout, "mem-big", args.big_mb * MB, gzip=False)
            add_image(layout, work, "mem-big", [big])

        tags = ["debian"] + ([] if args.skip_memory else ["mem-small", "mem-big"])
        outputs = Outputs(work, args.rounds, delete_between=args.delete_between)
        print(f"  outputs: {outputs.policy}")
        with run_registry(work / "registry") as registry:
            for tag in tags:
                registry.push_layout(layout, tag, f"bench/{tag}")
            ref = f"{registry.host}/bench/debian:debian"
            runs: dict[str, list[float]] = {}
            child_pull: list[float] = []
            warm_child: list[float] = []
            tools = ["layerhub", "podman", "skopeo+umoci", "tar -xzf"]
            for n in range(args.rounds):
                order = tools[n % len(tools) :] + tools[: n % len(tools)]
                for tool in order:
                    dest = work / f"run-{n}-{tool.replace(' ', '').replace('+', '-')}"
                    dest.mkdir()
                    drop_caches()
                    if tool == "layerhub":
                        run, report = pull_layerhub(ref, dest / "store")
                        wall = run.wall_s
                        child_pull.append(report["pull_s"])
                        drop_caches()
                        warm_child.append(pull_layerhub(ref, dest / "store")[1]["pull_s"])
                    elif tool == "podman":
                        wall = pull_podman(ref, dest).wall_s
                    elif tool == "skopeo+umoci":
                        wall = pull_umoci(ref, dest).wall_s
                    else:
                        wall = tar_floor(blobs, dest)
                    runs.setdefault(tool, []).append(wall)
                    outputs.keep(dest, podman=tool == "podman")
                print(
                    f"  round {n + 1}/{args.rounds}: "
                    + ", ".join(f"{tool} {runs[tool][-1]:.2f} s" for tool in tools),
                    flush=True,
                )

            unpack: dict[str, list[float]] = {}
            for n in range(args.rounds):
                for tool in ("layerhub", "GNU tar") if n % 2 == 0 else ("GNU tar", "layerhub"):
                    dest = work / f"unpack-{n}-{tool.replace(' ', '')}"
                    dest.mkdir()
                    drop_caches()
                    if tool == "layerhub":
                        env = {**os.environ, "PYTHONPATH": str(REPO)}
                        cmd = [sys.executable, "-c", APPLY_CHILD, str(single), str(dest)]
                        wall = run_measured(cmd, dest.with_suffix(".rss"), env)[0].wall_s
                    else:
                        cmd = ["tar", "-xzf", str(single), "-C", str(dest)]
                        wall = run_measured(cmd, dest.with_suffix(".rss"))[0].wall_s
                    unpack.setdefault(tool, []).append(wall)
                    outputs.keep(dest)
            outputs.clean()

            inflate = inflate_cpu(blobs, args.rounds)

            memory: dict[str, Run] = {}
            worker_peaks = None
            if not args.skip_memory:
                for tag in ("mem-small", "mem-big"):
                    dest = work / f"memory-{tag}"
                    drop_caches()
                    memory[tag] = pull_layerhub(f"{registry.host}/bench/{tag}:{tag}", dest)[0]
                    shutil.rmtree(dest, ignore_errors=True)
                worker_peaks = worker_memory(registry.host, work)

        med = {tool: statistics.median(values) for tool, values in runs.items()}
        print()
        print(f"== cold pull + unpack, medians of {args.rounds} rounds (wall seconds)")
        for tool in tools:
            ratio = med["layerhub"] / med[tool]
            print(
                f"{tool:14} {med[tool]:6.2f} s   layerhub/{tool}: {ratio:.2f}x   "
                f"(min {min(runs[tool]):.2f}, max {max(runs[tool]):.2f})"
            )
        print(
            f"layerhub in-process (without Python start-up): {statistics.median(child_pull):.2f} s"
        )
        print()
        umed = {tool: statistics.median(values) for tool, values in unpack.items()}
        print(f"== unpack alone of one 200 MB layer, medians of {args.rounds}")
        for tool in ("GNU tar", "layerhub"):
            print(f"{tool:10} {umed[tool]:6.2f} s (min {min(unpack[tool]):.2f})")
        print()
        print(f"== inflating the image's five blobs, CPU seconds, medians of {args.rounds}")
        imed = {name: statistics.median(values) for name, values in inflate.items()}
        for name in inflate:
            print(f"{name:22} {imed[name]:6.3f} s   ({imed[name] / imed['ISA-L (layerhub)']:.2f}x)")
        print()
        print("== warm pull (every layer already in the store)")
        print(f"layerhub: {statistics.median(warm_child):.3f} s in-process")
        if memory:
            print()
            print("== memory of the pulling process (one uncompressed layer)")
            for tag, size in (("mem-small", 100), ("mem-big", args.big_mb)):
                print(f"{size:>6} MB layer: peak RSS {mib(memory[tag].maxrss_kib)}")
        print()
        pod = med["layerhub"] / med["podman"]
        print(
            f"cold pull+unpack: at most 0.6x podman pull: "
            f"{'yes' if pod <= 0.6 else 'NO'} ({pod:.2f}x)"
        )
        one_ratio = umed["layerhub"] / umed["GNU tar"]
        print(
            f"unpack of one 200 MB layer: at most 1.2x GNU tar: "
            f"{'yes' if one_ratio <= 1.2 else 'NO'} ({one_ratio:.2f}x)"
        )
        small_rss = memory["mem-small"].maxrss_kib if memory else None
        big_rss = memory["mem-big"].maxrss_kib if memory else None
        if small_rss and big_rss:
            print_flat("memory", args.big_mb, small_rss, big_rss)
        if not args.skip_memory and worker_peaks is None:
            print("worker: not measured (no Redis at " + WORKER_BROKER + ")")
        elif worker_peaks is not None:
            peaks, warm_cli = worker_peaks
            print()
            print("== a real worker (celery -P solo: Django, Celery, the pull job)")
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
        if outputs is not None:
            outputs.clean()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
