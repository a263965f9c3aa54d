"""Reading jobs for the pages: progress as the CLI prints it, totals, durations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from layerhub.jobs.follow import progress_line
from layerhub.jobs.models import Job

# statuses after which a layer's bar is full whatever its byte counts say
_DONE_STATUSES = (
    "Download complete",
    "Already exists",
    "Pull complete",
    "Pushed",
    "Layer already exists",
)


@dataclass(frozen=True)
class LayerLine:
    """One layer's progress: what ``layerhub pull`` prints for it, and a bar."""

    digest: str
    short: str
    status: str
    current: int
    total: int
    text: str  # the CLI's line: "3f4e1a2b9c0d: Downloading 1.2MB/4.5MB"
    percent: int  # 0..100, for the bar
    done: bool


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def layer_lines(job: Job) -> list[LayerLine]:
    """The job's per-layer progress, in the order it was recorded (manifest order)."""
    lines = []
    for entry in job.progress or []:
        if not isinstance(entry, dict) or "digest" not in entry:
            continue
        status = str(entry.get("status", ""))
        current, total = _int(entry.get("current")), _int(entry.get("total"))
        done = status in _DONE_STATUSES or status.startswith("Mounted from")
        if done:
            percent = 100
        elif total > 0:
            percent = min(100, current * 100 // total)
        else:
            percent = 0
        digest = str(entry["digest"])
        lines.append(
            LayerLine(
                digest=digest,
                short=digest.split(":")[-1][:12],
                status=status,
                current=current,
                total=total,
                text=progress_line(entry),
                percent=percent,
                done=done,
            )
        )
    return lines


@dataclass(frozen=True)
class Bytes:
    """Bytes done of bytes in all, across a job's layers."""

    done: int
    total: int

    @property
    def percent(self) -> int:
        return min(100, self.done * 100 // self.total) if self.total else 0


def progress_bytes(job: Job) -> Bytes:
    """Bytes done and in all across the job's layers (a finished layer counts in full)."""
    done = total = 0
    for line in layer_lines(job):
        total += line.total
        done += line.total if line.done else min(line.current, line.total)
    return Bytes(done, total)


def job_duration(job: Job, now: datetime | None = None) -> timedelta | None:
    """How long the job ran (or has been running); None before it started."""
    if job.started_at is None:
        return None
    end = job.finished_at or (now or timezone.now())
    return max(end - job.started_at, timedelta(0))


def duration_text(delta: timedelta | None) -> str:
    """``4s``, ``2m 05s``, ``1h 02m``."""
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def export_file(job: Job) -> Path | None:
    """The archive a finished export job wrote, if it is still there and lies under
    LAYERHUB_EXPORT_DIR (only those are served: an export the CLI wrote elsewhere is that
    user's file, not the site's)."""
    if job.kind != Job.Kind.EXPORT or job.state != Job.State.SUCCEEDED:
        return None
    raw = job.params.get("path") if isinstance(job.params, dict) else None
    if not raw:
        return None
    root = Path(settings.LAYERHUB_EXPORT_DIR).resolve()
    path = Path(raw).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def download_name(job: Job) -> str:
    """The archive's name for the browser: after the image saved (``team_app_v1.tar``)."""
    images = job.params.get("images") if isinstance(job.params, dict) else None
    if images:
        first = str(images[0]).split("/")[-1]
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in first).strip("._")
        if stem:
            suffix = "-oci" if job.params.get("format") == "oci" else ""
            return f"{stem}{suffix}.tar"
    return Path(str(job.params.get("path", f"export-{job.pk}.tar"))).name
