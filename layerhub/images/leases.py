"""Leases: what a running job will reference is not deleted under it.

A pull, import, unpack or commit writes a lease on every blob digest and snapshot ChainID it
will name before it judges any of them "already in the store"; ``rmi`` (and later garbage
collection) checks for a live lease under the same per-blob or per-snapshot lock it deletes
under, and leaves what is leased. Either the delete comes first (the job then finds the blob
missing and fetches it), or the lease does (the delete leaves the file; the job's records
bring back the rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from django.db import transaction

from layerhub.jobs.models import Job, Lease

LIVE_STATES = (Job.State.QUEUED, Job.State.RUNNING)


def job_lease(*, job: Job, keys: Iterable[str]) -> None:
    """Record (and commit, unless inside a transaction) leases of ``job`` on ``keys``."""
    wanted = {key for key in keys if key}
    if not wanted:
        return
    with transaction.atomic():
        held = set(Lease.objects.filter(job=job, key__in=wanted).values_list("key", flat=True))
        Lease.objects.bulk_create(
            [Lease(job=job, key=key) for key in sorted(wanted - held)], ignore_conflicts=True
        )


def job_leaser(job: Job) -> Callable[[Sequence[str]], None]:
    """``job_lease`` for ``job`` as an engine hook."""

    def lease(keys: Sequence[str]) -> None:
        job_lease(job=job, keys=keys)

    return lease


def job_lease_copy(*, source: Job, target: Job) -> None:
    """Give ``target`` every lease ``source`` holds (an unpack taking over from its pull)."""
    job_lease(job=target, keys=Lease.objects.filter(job=source).values_list("key", flat=True))


def lease_held(key: str) -> bool:
    """Whether a job that has not ended holds a lease on ``key``."""
    return Lease.objects.filter(key=key, job__state__in=LIVE_STATES).exists()


def lease_held_by_other(job: Job) -> Callable[[str], bool]:
    """Whether a job other than ``job`` that has not ended holds a lease on a key."""

    def held(key: str) -> bool:
        return Lease.objects.filter(key=key, job__state__in=LIVE_STATES).exclude(job=job).exists()

    return held
