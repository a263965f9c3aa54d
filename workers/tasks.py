"""Celery tasks: thin wrappers, each calling one service or store operation."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from django.conf import settings

from layerhub.containers import services as container_services
from layerhub.core.store import get_store
from layerhub.hosts.call_process import CallServerProcess
from layerhub.hosts.calls import operations_load
from layerhub.hosts.routing import host_queue
from layerhub.images import removal
from layerhub.images import services as image_services
from layerhub.images.removal import SNAPSHOTS_COLLECT_TASK
from layerhub.images.services import dedup as dedup_services
from layerhub.images.services import file_index as index_services
from layerhub.images.services import gc as gc_services
from layerhub.images.services import transfer
from layerhub.images.services import verify as verify_services
from layerhub.jobs.models import Job
from workers.celery import app
from workers.housekeeping import Housekeeper

logger = logging.getLogger(__name__)
# a job here may call an operation of its own host, which then runs in-process
operations_load()


def _run_job(run: Callable[..., None], job_id: int) -> None:
    """Call a job service; a job this database does not have is dropped with a warning.

    Such a task comes from another deployment sharing the queue (same LAYERHUB_QUEUE on one
    Redis) or from a job deleted since it was queued: neither is this worker's error, and
    failing the task would only bury the warning in a traceback.
    """
    try:
        run(job_id=job_id)
    except Job.DoesNotExist:
        logger.warning(
            "dropped a task for job %s: this database has no such job (queue %s; another "
            "deployment sending to the same queue, or the job was deleted)",
            job_id,
            settings.LAYERHUB_QUEUE,
        )


@app.task(name=SNAPSHOTS_COLLECT_TASK)
def host_snapshots_collect(chain_ids: list[str] | None = None) -> int:
    """Remove this host's snapshots no layer row or lease holds (after an rmi or a garbage
    collection on another host); return how many went."""
    removed = removal.host_snapshots_collect(chain_ids)
    if removed:
        logger.info("removed %d snapshots no image uses any more from this host", len(removed))
    return len(removed)


@celeryd_after_setup.connect
def take_host_queue(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """Every worker also takes the jobs sent to its own host's queue
    (``<LAYERHUB_QUEUE>.host.<LAYERHUB_HOST>``): those that need this host's disk."""
    if instance is not None:
        instance.app.amqp.queues.select_add(host_queue(settings.LAYERHUB_HOST))


@app.task(name="layerhub.store_sweep_tmp")
def store_sweep_tmp() -> int:
    """Remove what interrupted downloads and unpacks left in the store's tmp/; return the count."""
    removed = get_store().sweep_tmp()
    logger.info("swept %d leftover tmp entries from the layer store", removed)
    return removed


@app.task(name="layerhub.image_pull")
def image_pull(job_id: int) -> None:
    """Run a pull job: fetch the image's missing blobs, record it, queue its unpack."""
    _run_job(image_services.image_pull_run, job_id)


@app.task(name="layerhub.image_unpack")
def image_unpack(job_id: int) -> None:
    """Run an unpack job: turn each of the image's layers into its snapshot."""
    _run_job(image_services.image_unpack_run, job_id)


@app.task(name="layerhub.image_import")
def image_import(job_id: int) -> None:
    """Run an import job: a docker save archive or an OCI layout into the store."""
    _run_job(image_services.image_import_run, job_id)


@app.task(name="layerhub.container_commit")
def container_commit(job_id: int) -> None:
    """Run a commit job: the container's writable layer becomes a new layer and image."""
    _run_job(container_services.container_commit_run, job_id)


@app.task(name="layerhub.image_push")
def image_push(job_id: int) -> None:
    """Run a push job: the blobs a registry lacks, then the manifest."""
    _run_job(transfer.image_push_run, job_id)


@app.task(name="layerhub.image_save")
def image_save(job_id: int) -> None:
    """Run an export job: a docker save archive or an OCI layout tar."""
    _run_job(transfer.image_save_run, job_id)


@app.task(name="layerhub.store_verify")
def store_verify(job_id: int) -> None:
    """Run a verify job: compare the store on disk with the catalog's recorded sizes."""
    _run_job(verify_services.store_verify_run, job_id)


@app.task(name="layerhub.index_files")
def index_files(job_id: int) -> None:
    """Run an index job: record the file index of snapshots made before indexing."""
    _run_job(index_services.index_files_run, job_id)


@app.task(name="layerhub.store_gc")
def store_gc(job_id: int) -> None:
    """Run a garbage collection job (or its dry run)."""
    _run_job(gc_services.store_gc_run, job_id)


@app.task(name="layerhub.store_dedup")
def store_dedup(job_id: int) -> None:
    """Run a dedup job (or its dry run): hardlink identical files across snapshots."""
    _run_job(dedup_services.store_dedup_run, job_id)


@app.task(name="layerhub.store_gc_scheduled")
def store_gc_scheduled() -> None:
    """What Celery beat sends every LAYERHUB_GC_EVERY: queue a garbage collection job, unless
    one is queued or running already."""
    gc_services.store_gc_scheduled()


@worker_ready.connect
def sweep_tmp_on_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """Sweep the store's tmp/ once when a worker starts, as the design asks, then start its
    housekeeping (presence record, dead-job sweep: workers/housekeeping.py) and the process
    that answers the calls to its host (layerhub.hosts.call_process).

    Run in the worker's own process rather than queued, so it happens before this worker
    takes a job, whatever else is waiting in the queue. Only the main process gets this
    signal, once, after its pool has started.
    """
    store_sweep_tmp()
    if sender is None:
        return  # sent by hand, not by a worker: nothing to keep house for
    global _housekeeper, _call_server
    queues = _consumed_queues(sender)
    if settings.LAYERHUB_QUEUE not in queues:
        logger.warning(
            "this worker takes jobs from %s, but this deployment queues its jobs on %s",
            ", ".join(queues),
            settings.LAYERHUB_QUEUE,
        )
    logger.info("taking jobs from queue %s", ", ".join(queues))
    _housekeeper = Housekeeper(name=str(getattr(sender, "hostname", "worker")), queues=queues)
    _housekeeper.start()
    _call_server = CallServerProcess()
    _call_server.start()


_housekeeper: Housekeeper | None = None
_call_server: CallServerProcess | None = None


def _consumed_queues(consumer: Any) -> list[str]:
    try:
        names = [queue.name for queue in consumer.task_consumer.queues]
    except AttributeError:  # sent by hand (tests), not by a worker's consumer
        names = []
    return sorted(set(names)) or [settings.LAYERHUB_QUEUE]


@worker_shutdown.connect
def leave_on_worker_shutdown(sender: Any = None, **kwargs: Any) -> None:
    """Stop answering calls (those running finish while their callers wait), then withdraw
    the worker's presence record as it stops."""
    global _housekeeper, _call_server
    if _call_server is not None:
        _call_server.stop()
        _call_server = None
    if _housekeeper is not None:
        _housekeeper.stop()
        _housekeeper = None
