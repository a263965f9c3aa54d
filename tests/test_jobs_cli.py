"""Errors people can act on, through real manage.py processes: one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from layerhub.jobs.models import Job
from tests.support.database import database_url

ROOT = Path(__file__).resolve().parent.parent


def manage(
    *argv: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "LAYERHUB_STORE": str(settings.LAYERHUB_STORE), **(env or {})}
    return subprocess.run(
        [sys.executable, "manage.py", *argv],
        cwd=ROOT,
        env=full,
        stdin=subprocess.DEVNULL,  # no terminal, as under CI or a pipe
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("DATABASE_URL", "mysql://db/x"),
        ("LAYERHUB_JOB_HEARTBEAT", "inf"),
        ("LAYERHUB_SNAPSHOT_CACHE_MAX", "50 gigs"),
    ],
)
def test_bad_settings_stop_manage_py_with_one_line(name: str, value: str) -> None:
    line = one_line_error(manage("images", env={name: value}))
    assert line.startswith("layerhub: bad settings:")
    assert name in line


def test_bad_settings_stop_a_worker_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "worker"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "maybe"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "DEBUG='maybe'" in one_line_error(result)


def test_login_without_a_terminal_says_how_to_pass_the_password() -> None:
    line = one_line_error(manage("login", "registry.example", "-u", "ada"))
    assert "--password-stdin" in line
    assert "registry.example" in line


@pytest.mark.django_db(transaction=True)
def test_pull_with_the_broker_down_says_so_and_fails_the_job() -> None:
    started = time.monotonic()
    result = manage(
        "pull",
        "team/app:v1",
        env={
            "DATABASE_URL": database_url(),
            "REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens there
        },
    )
    line = one_line_error(result)
    assert "broker" in line
    assert "redis://127.0.0.1:1/0" in line
    assert time.monotonic() - started < 30
    job = Job.objects.get()
    assert job.state == Job.State.FAILED  # not left queued for a worker never told of it
    assert "does not answer" in job.error


@pytest.mark.django_db(transaction=True)
def test_following_a_pull_no_worker_takes_ends_with_a_message(broker: str) -> None:
    started = time.monotonic()
    result = manage(
        "pull",
        "team/app:v1",
        env={
            "DATABASE_URL": database_url(),
            "REDIS_URL": broker,
            "LAYERHUB_JOB_HEARTBEAT": "0.5",
            "LAYERHUB_JOB_DEAD_AFTER": "3",
        },
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"no worker takes jobs from queue {settings.LAYERHUB_QUEUE}" in result.stderr
    assert "no worker took pull job" in result.stderr
    assert time.monotonic() - started < 30
    assert Job.objects.get().state == Job.State.QUEUED


@pytest.mark.django_db
def test_a_host_fault_in_a_command_is_one_line_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from layerhub.images.management.commands import rmi

    def fault(**kwargs: object) -> list[str]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(rmi, "image_remove", fault)
    with pytest.raises(CommandError) as info:
        call_command("rmi", "team/app:v1")
    message = str(info.value)
    assert message.startswith("internal error (not caused by your input): OSError")
    assert "--traceback" in message
    assert "\n" not in message
    with pytest.raises(OSError, match="Input/output error"):
        call_command("rmi", "team/app:v1", traceback=True)  # for whoever debugs it
