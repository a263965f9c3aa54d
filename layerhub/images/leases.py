"""Leases: what a running job will reference is not deleted under it.

A pull, import, unpack or commit writes a lease on every blob digest and snapshot ChainID it
will name before it judges any of them "already in the store"; ``rmi`` and garbage collection
check, under the same per-blob or per-snapshot lock they delete under, for a live lease and
then for a row naming the key (``blob_in_use``, ``snapshot_in_use``), and leave what either
holds. Either the delete comes first (the job then finds the blob missing and fetches it), or
the lease does (the delete leaves the file). Looking at the lease before the rows matters: a
job whose lease is seen ended has recorded its rows before it ended, so the second look sees
them.

Rows with no file lock of their own (a layer row no image uses, which garbage collection
deletes) are judged under ``lease_barrier``: leases are written under its shared side and
garbage collection marks and deletes under its exclusive side, as containerd's metadata store
takes its write lock shared for writes and exclusive for a collection.

Blobs in an object store that several hosts share have no lock of theirs that every host
sees (a blob's lock is a file of the host's store): deleting one is judged and done under the
exclusive side of ``lease_barrier`` as well (``blob_delete_guard``), so a lease another host
writes meanwhile waits for the delete, and its job then finds the blob missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from django.db import connection, transaction
from django.db.models import Q

from layerhub.core.store import get_store
from layerhub.engine.store import LocalBlobs
from layerhub.images.models import Image, Layer
from layerhub.jobs.models import Job, Lease

LIVE_STATES = (Job.State.QUEUED, Job.State.RUNNING)
# the PostgreSQL advisory lock key of lease_barrier: "layerhub" in ASCII, an arbitrary constant
BARRIER_KEY = 0x6C61796572687562


def lease_barrier(*, exclusive: bool) -> None:
    """Take the lease barrier until the current transaction ends: shared to write leases,
    exclusive to judge and delete what no lease holds (garbage collection).

    A lease committed before the exclusive side is taken is seen by its holder; one written
    after waits for it to commit. On PostgreSQL an advisory transaction lock; on SQLite every
    write transaction already takes the database's one write lock at BEGIN (the settings'
    IMMEDIATE transaction mode), which orders them the same way. Take it before the
    transaction locks any row, as every caller does, or two transactions can wait on each
    other.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("lease_barrier must be taken inside a transaction")
    if connection.vendor == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {function}(%s)", [BARRIER_KEY])


@contextmanager
def blob_delete_guard() -> Iterator[None]:
    """Hold while judging whether a blob is in use and deleting it. With blobs in an object
    store (shared by the hosts, whose blob locks are each host's own): a transaction under
    the exclusive side of ``lease_barrier``, which a lease written on any host waits for; with
    the store's own ``blobs/`` nothing (the blob's lock, on this one machine, does it).

    Not inside another transaction that has locked rows (see ``lease_barrier``)."""
    if isinstance(get_store().blobs, LocalBlobs):
        yield
        return
    with transaction.atomic():
        lease_barrier(exclusive=True)
        yield


def job_lease(*, job: Job, keys: Iterable[str]) -> None:
    """Record (and commit, unless inside a transaction) leases of ``job`` on ``keys``."""
    wanted = {key for key in keys if key}
    if not wanted:
        return
    with transaction.atomic():
        lease_barrier(exclusive=False)
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


def blob_named(digest: str) -> bool:
    """Whether a row names the blob: an image (as its manifest, config or index) or a layer."""
    images = Image.objects.filter(
        Q(manifest_digest=digest) | Q(config_digest=digest) | Q(index_digest=digest)
    )
    return images.exists() or Layer.objects.filter(digest=digest).exists()


def blob_in_use(digest: str) -> bool:
    """Whether a live lease or a row holds the blob; ask under the blob's lock, where jobs
    judge it "already there". The lease is looked at first (see the module docstring)."""
    return lease_held(digest) or blob_named(digest)


def blob_in_use_by_other(job: Job) -> Callable[[str], bool]:
    """``blob_in_use`` with ``job``'s own leases left out: what a failed import may take back
    of the blobs it added (another job may have judged one "already there" and recorded it
    since, and ended: its rows hold the blob then, not its lease)."""
    leased = lease_held_by_other(job)

    def in_use(digest: str) -> bool:
        return leased(digest) or blob_named(digest)

    return in_use


def snapshot_in_use(chain_id: str) -> bool:
    """Whether a live lease or a layer row holds the snapshot ``chain_id``; ask under the
    snapshot's lock. The lease is looked at first (see the module docstring)."""
    return lease_held(chain_id) or Layer.objects.filter(chain_id=chain_id).exists()
