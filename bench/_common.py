"""What the benchmarks share: cold caches, tool versions, and timing a command with its peak
memory measured the one honest way (GNU time)."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def drop_caches() -> bool:
    """sync, then drop the page cache if we may; whether it was dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "not found"
    return out.splitlines()[0].strip()


@dataclass
class Run:
    wall_s: float
    maxrss_kib: int | None  # None without GNU time
    apply_s: float | None = None  # layerhub: inside the child, without start-up and imports


# ru_maxrss straight from wait4() on our own child is useless here: at execve() Linux folds the
# high-water mark of the memory the child had before exec (this fat Python process, shared by
# vfork or copied by fork) into the child's maxrss. GNU time forks the command from its own tiny
# process and reports that child's wait4() ru_maxrss (%M), which is the real peak (children
# included, so gzip under tar -xz counts).
GNU_TIME = "/usr/bin/time"


def run_measured(
    cmd: list[str], rss_file: Path, env: dict[str, str] | None = None
) -> tuple[Run, str]:
    """Run ``cmd``; wall time, the child's peak RSS and its stdout."""
    timed = os.access(GNU_TIME, os.X_OK)
    if timed:
        cmd = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, cwd=REPO, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with exit code {proc.returncode}")
    rss = int(rss_file.read_text().split()[-1]) if timed else None
    return Run(wall, rss), proc.stdout.decode()
