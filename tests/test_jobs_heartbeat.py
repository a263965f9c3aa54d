"""Jobs whose worker is gone are noticed: claims, heartbeats, the dead-job sweep, tasks for
jobs this database does not have, and a CLI that follows a job nobody runs."""

from __future__ import annotations

import io
import logging
import time
from datetime import timedelta

import pytest
from celery import current_app
from django.core.management.base import CommandError
from django.utils import timezone
from pytest_django import Settings

from layerhub.jobs import services
from layerhub.jobs.follow import Watchdog
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_run
from workers import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def tiny_timings(settings: Settings) -> None:
    settings.LAYERHUB_JOB_HEARTBEAT = 0.1
    settings.LAYERHUB_JOB_DEAD_AFTER = 1.0


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Jobs handed to the broker, recorded instead of sent."""
    calls: list[int] = []
    monkeypatch.setattr(services, "job_enqueue", lambda *, job: calls.append(job.pk))
    return calls


def running_job(*, beat_age: float, attempts: int = 1) -> Job:
    at = timezone.now() - timedelta(seconds=beat_age)
    return Job.objects.create(
        kind=Job.Kind.PULL,
        state=Job.State.RUNNING,
        attempts=attempts,
        started_at=at,
        heartbeat_at=at,
        runner="elsewhere:1:x",
    )


def test_claim_stamps_the_heartbeat_and_the_runner() -> None:
    job = Job.objects.create(kind=Job.Kind.PULL)
    assert job.claim()
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING
    assert job.heartbeat_at is not None
    assert job.runner


def test_a_second_delivery_of_a_live_job_is_dropped() -> None:
    # Redis redelivers a message after its visibility timeout while the job still runs:
    # running it again beside the live run would do everything twice.
    job = running_job(beat_age=0.0)
    assert not Job.objects.get(pk=job.pk).claim()
    job.refresh_from_db()
    assert (job.state, job.attempts, job.runner) == (Job.State.RUNNING, 1, "elsewhere:1:x")


def test_a_delivery_of_a_dead_job_claims_it_again() -> None:
    job = running_job(beat_age=5.0)
    assert Job.objects.get(pk=job.pk).claim()
    job.refresh_from_db()
    assert (job.state, job.attempts) == (Job.State.RUNNING, 2)


def test_reap_dead_requeues_a_job_whose_heartbeat_stopped(sent: list[int]) -> None:
    dead = running_job(beat_age=5.0)
    alive = running_job(beat_age=0.0)
    moved = Job.objects.reap_dead()
    assert [job.pk for job in moved] == [dead.pk]
    assert sent == [dead.pk]
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.state == Job.State.QUEUED
    assert alive.state == Job.State.RUNNING
    assert Job.objects.reap_dead() == []  # once only


def test_reap_dead_fails_a_job_that_lost_its_worker_too_often(sent: list[int]) -> None:
    job = running_job(beat_age=5.0, attempts=Job.max_attempts())
    Job.objects.reap_dead()
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "stopped 3 times" in job.error
    assert sent == []


def test_job_run_keeps_the_heartbeat_fresh_while_the_work_runs() -> None:
    job = Job.objects.create(kind=Job.Kind.PULL)
    assert job.claim()
    stamps = []

    def work() -> None:
        for _ in range(6):
            time.sleep(0.1)
            stamps.append(Job.objects.get(pk=job.pk).heartbeat_at)

    job_run(job, work)
    assert len(set(stamps)) >= 3, "the heartbeat moved on while the job ran"
    assert not Job.objects.dead().exists()


def test_job_run_records_a_host_fault_as_an_internal_error_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = Job.objects.create(kind=Job.Kind.PULL)
    assert job.claim()

    def work() -> None:
        raise OSError(5, "Input/output error\nfrom the disk")

    with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="Input"):
        job_run(job, work)
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert job.error.startswith("internal error")
    assert "OSError" in job.error
    assert "worker's log" in job.error
    assert "\n" not in job.error
    assert any(record.exc_info for record in caplog.records), "logged with its traceback"


def test_a_task_for_a_job_this_database_lacks_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        tasks.image_pull.run(987654)  # no Job.DoesNotExist
        tasks.image_unpack.run(987654)
    assert "no such job" in caplog.text


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_following_a_job_nobody_takes_ends_with_a_message(settings: Settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: no worker can be there
    settings.LAYERHUB_BROKER_TIMEOUT = 0.5
    job = Job.objects.create(kind=Job.Kind.PULL)
    err = io.StringIO()
    clock = Clock()
    watchdog = Watchdog(err, what="pull", clock=clock)
    clock.now = 1.5
    watchdog.check(job)
    assert "does not answer" in err.getvalue()
    clock.now = 3.0
    with pytest.raises(CommandError, match="no worker took pull job") as info:
        watchdog.check(job)
    assert settings.LAYERHUB_QUEUE in str(info.value)
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED  # it runs when a worker starts


def test_following_a_job_whose_worker_died_requeues_it(sent: list[int]) -> None:
    job = running_job(beat_age=5.0)
    err = io.StringIO()
    clock = Clock()
    watchdog = Watchdog(err, what="pull", clock=clock)
    clock.now = 1.5
    watchdog.check(job)
    assert "stopped; it is queued again (run 2 of 3)" in err.getvalue()
    assert sent == [job.pk]
    assert job.state == Job.State.QUEUED


def test_following_a_job_that_ends_at_once_asks_the_broker_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A warm pull is over within a poll or two: following it must not wait on a question
    # to the workers first (a broadcast ping waited its full 2 s timeout every time).
    import layerhub.jobs.follow as follow_module

    def asked(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("the broker was asked before following started")

    monkeypatch.setattr(follow_module, "workers_present", asked)
    monkeypatch.setattr(current_app.control, "ping", asked)
    job = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.SUCCEEDED)
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    assert follow_module.follow_to_end(job, out, err, what="pull").pk == job.pk
    assert time.monotonic() - started < 0.5
    assert err.getvalue() == ""


def test_a_run_taken_for_dead_does_not_record_over_the_run_that_took_over(
    sent: list[int],
) -> None:
    job = Job.objects.create(kind=Job.Kind.PULL)
    assert job.claim()

    def stalled_then_done() -> None:
        # meanwhile the job was taken for dead, re-queued and claimed by another run
        Job.objects.filter(pk=job.pk).update(runner="other:2:y", attempts=2)

    job_run(job, stalled_then_done)
    job.refresh_from_db()
    assert (job.state, job.runner) == (Job.State.RUNNING, "other:2:y")
