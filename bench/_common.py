"""What the benchmarks share: cold caches, tool versions, and timing a command with its peak
memory measured the one honest way (GNU time)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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


def compile_project() -> None:
    """Byte-compile layerhub, as an installed deployment has it (``make install`` does this):
    with PYTHONDONTWRITEBYTECODE set, every process started to pull or unpack would otherwise
    compile the project's modules again, a cost no compiled peer pays."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "layerhub"), str(REPO / "workers")],
        check=True,
    )


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
    write_s: float | None = None  # layerhub with the file index: writing its records out
    records: int = 0  # layerhub with the file index: how many records it gave


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


def tar_gzip_blob(upper: Path, out: Path, compresslevel: int = 6) -> float:
    """The fair peer of a layer diff, timed: ``tar -C upper -cf - . | gzip -n > out``, then
    the blob's sha256 and an fsync, as a content store keeps it (what Docker's overlay2
    differ does: tar the upper directory as it is and compress the stream).

    Wall seconds from starting tar to the fsync.
    """
    start = time.perf_counter()
    with open(out, "wb") as sink:
        tar = subprocess.Popen(["tar", "-C", str(upper), "-cf", "-", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        gz = subprocess.run(
            ["gzip", f"-{compresslevel}", "-n"], stdin=tar.stdout, stdout=sink, check=False
        )
        tar.stdout.close()
        if tar.wait() != 0 or gz.returncode != 0:
            raise RuntimeError(f"tar | gzip of {upper} failed ({tar.returncode}, {gz.returncode})")
        digest = hashlib.sha256()
        with open(out, "rb") as blob:
            while chunk := blob.read(1 << 20):
                digest.update(chunk)
        os.fsync(sink.fileno())
    return time.perf_counter() - start


def ratio_line(label: str, ours: float, theirs: float) -> str:
    """``label: 1.23x (0.456 s / 0.370 s)``; a ratio of medians, over 1 means layerhub is slower."""
    return f"{label}: {ours / theirs:.2f}x ({ours:.3f} s / {theirs:.3f} s)"
