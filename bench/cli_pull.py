"""Warm CLI pull benchmark, run on demand: ``.venv/bin/python bench/cli_pull.py [--runs N]``.

What a person waits for when they type ``manage.py pull REF`` for an image the store already
has, with a worker running: Python and Django start-up, the command's imports, recording and
queueing the job, the worker's pull job (manifest and config only, every layer
"Already exists"), and following them to the end. The target is under 1 s wall (median).

A registry on loopback (the tests' CNCF registry, seeded with skopeo) serves a small image of
three layers; a database, a store and a queue of this run's own, and a real worker
(``celery -A workers worker -P solo``) on that queue. One cold pull fills the store, then
``--runs`` warm pulls are timed. Beside them, ``manage.py pull --help`` (start-up and the
command's imports, no job) splits the wall time into start-up and the job chain, and
``-X importtime`` of one warm pull names the modules that cost most to import (Python times
``import`` statements only: a module Django loads with ``importlib.import_module``, such as the
settings, an app's models or a command, is not listed itself, but what it imports is).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.pull import (  # noqa: E402
    WORKER_BROKER,
    _delete_queue,
    add_image,
    make_layer,
    new_layout,
)
from tests.support.registry import run_registry  # noqa: E402

TARGET_S = 1.0
CELERY = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-P", "solo", "-l", "error"]
# modules that running a pull needs and starting one does not (tests/test_cli_imports.py)
HEAVY = (
    "requests",
    "layerhub.engine.registry.client",
    "truststore",
    "layerhub.engine.pull",
    "layerhub.engine.store",
    "layerhub.images.services.pull",
    "workers.tasks",
    "celery.worker.consumer",
    "cryptography.fernet",
)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd`` to success in the checkout, its output dropped: its wall time, and its own
    CPU time (user + system, which other load on the machine disturbs less)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def import_breakdown(cmd: list[str], env: dict[str, str], top: int) -> tuple[float, list[str]]:
    """Run ``cmd`` under ``-X importtime``: the total import time (s) and the ``top`` costliest
    top-level imports (each with everything it imported in turn)."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]],
        cwd=REPO,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    rows: list[tuple[int, int, str]] = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        try:
            micros = int(cumulative)
        except ValueError:
            continue  # the header line
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((depth, micros, name.strip()))
    total = sum(micros for depth, micros, _ in rows if depth == 0)
    loaded = {name for _, _, name in rows}
    heavy = [h for h in HEAVY if h in loaded]
    lines = [
        f"{micros / 1000:7.1f} ms  {name}"
        for depth, micros, name in sorted(rows, key=lambda r: -r[1])
        if depth == 0
    ][:top]
    lines.append(f"heavy modules imported: {', '.join(heavy) if heavy else 'none'}")
    return total / 1e6, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed warm pulls")
    parser.add_argument("--top", type=int, default=15, help="imports listed in the breakdown")
    parser.add_argument("--tmp", default=None, help="where to work (default: system temp)")
    args = parser.parse_args()
    if not shutil.which("skopeo") or not shutil.which("docker-registry"):
        sys.exit("bench/cli_pull.py needs skopeo and docker-registry (Debian packages)")
    import redis

    try:
        redis.Redis.from_url(WORKER_BROKER, socket_connect_timeout=1).ping()
    except redis.RedisError:
        # as bench/pull.py's worker part: not measured, and `make bench` goes on
        print(f"warm CLI pull: not measured (no Redis at {WORKER_BROKER})")
        return

    work = Path(tempfile.mkdtemp(prefix="layerhub-cli-bench-", dir=args.tmp))
    queue = f"layerhub-bench-cli-{os.getpid()}"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
        "LAYERHUB_STORE": str(work / "store"),
        "REDIS_URL": WORKER_BROKER,
        # a queue of this run's own: nothing else's jobs are taken, nothing is flushed
        "LAYERHUB_QUEUE": queue,
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    manage = [sys.executable, "manage.py"]
    worker = None
    try:
        layout = new_layout(work / "layout")
        layers = [make_layer(work, layout, f"l{i}", 1_000_000, gzip=True) for i in range(3)]
        add_image(layout, work, "warm", layers)
        subprocess.run([*manage, "migrate", "-v0"], cwd=REPO, env=env, check=True)
        with run_registry(work / "registry") as registry:
            registry.push_layout(layout, "warm", "bench/cli")
            ref = f"{registry.host}/bench/cli:warm"
            worker = subprocess.Popen(
                [*CELERY, "-Q", queue],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(work / "worker.log", "wb"),  # noqa: SIM115 - closed with the process
                start_new_session=True,
            )
            cold, _ = timed([*manage, "pull", ref], env)
            warm: list[float] = []
            warm_cpu: list[float] = []
            helps: list[float] = []
            for _ in range(args.runs):
                wall, cpu = timed([*manage, "pull", ref], env)
                warm.append(wall)
                warm_cpu.append(cpu)
                helps.append(timed([*manage, "pull", "--help"], env)[0])
            imports_s, breakdown = import_breakdown([*manage, "pull", ref], env, args.top)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(60)
        _delete_queue(WORKER_BROKER, queue)
        shutil.rmtree(work, ignore_errors=True)

    warm_s, help_s = statistics.median(warm), statistics.median(helps)
    print("layerhub warm CLI pull benchmark")
    load = os.getloadavg()[0]
    print(f"  python: {sys.version.split()[0]}, nproc: {os.cpu_count()}, load: {load:.2f}")
    # without .pyc files every run compiles layerhub's own modules again
    cached = "off (PYTHONDONTWRITEBYTECODE)" if sys.dont_write_bytecode else "on"
    print(f"  bytecode cache: {cached}")
    print(f"first (cold) pull: {cold:.2f} s")
    print(
        f"warm `manage.py pull`: {warm_s:.2f} s wall, median of {len(warm)} "
        f"(min {min(warm):.2f}, max {max(warm):.2f})"
    )
    print(f"its CPU time (the command's process alone): {statistics.median(warm_cpu):.2f} s")
    print(f"`manage.py pull --help` (start-up and imports, no job): {help_s:.2f} s, median")
    print(f"the job chain and following it: {warm_s - help_s:.2f} s (difference of medians)")
    print(f"imports of one warm pull (-X importtime, top level): {imports_s:.2f} s")
    for line in breakdown:
        print(f"  {line}")
    verdict = "yes" if warm_s < TARGET_S else "no"
    print(f"warm pull under {TARGET_S:.0f} s: {verdict} ({warm_s:.2f} s)")


if __name__ == "__main__":
    main()
