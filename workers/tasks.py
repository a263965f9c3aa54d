"""Celery tasks: thin wrappers, each calling one service or store operation."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from layerhub.containers import services as container_services
from layerhub.core.store import get_store
from layerhub.images import services as image_services
from layerhub.images.services import transfer
from workers.celery import app

logger = logging.getLogger(__name__)


@app.task(name="layerhub.store_sweep_tmp")
def store_sweep_tmp() -> int:
    """Remove what interrupted downloads and unpacks left in the store's tmp/; return the count."""
    removed = get_store().sweep_tmp()
    logger.info("swept %d leftover tmp entries from the layer store", removed)
    return removed


@app.task(name="layerhub.image_pull")
def image_pull(job_id: int) -> None:
    """Run a pull job: fetch the image's missing blobs, record it, queue its unpack."""
    image_services.image_pull_run(job_id=job_id)


@app.task(name="layerhub.image_unpack")
def image_unpack(job_id: int) -> None:
    """Run an unpack job: turn each of the image's layers into its snapshot."""
    image_services.image_unpack_run(job_id=job_id)


@app.task(name="layerhub.image_import")
def image_import(job_id: int) -> None:
    """Run an import job: a docker save archive or an OCI layout into the store."""
    image_services.image_import_run(job_id=job_id)


@app.task(name="layerhub.container_commit")
def container_commit(job_id: int) -> None:
    """Run a commit job: the container's writable layer becomes a new layer and image."""
    container_services.container_commit_run(job_id=job_id)


@app.task(name="layerhub.image_push")
def image_push(job_id: int) -> None:
    """Run a push job: the blobs a registry lacks, then the manifest."""
    transfer.image_push_run(job_id=job_id)


@app.task(name="layerhub.image_save")
def image_save(job_id: int) -> None:
    """Run an export job: a docker save archive or an OCI layout tar."""
    transfer.image_save_run(job_id=job_id)


@worker_ready.connect
def sweep_tmp_on_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """Sweep the store's tmp/ once when a worker starts, as the design asks.

    Run in the worker's own process rather than queued, so it happens before this worker
    takes a job, whatever else is waiting in the queue.
    """
    store_sweep_tmp()
