"""Celery tasks: thin wrappers, each calling one service or store operation."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from layerhub.core.store import get_store
from workers.celery import app

logger = logging.getLogger(__name__)


@app.task(name="layerhub.store_sweep_tmp")
def store_sweep_tmp() -> int:
    """Remove what interrupted downloads and unpacks left in the store's tmp/; return the count."""
    removed = get_store().sweep_tmp()
    logger.info("swept %d leftover tmp entries from the layer store", removed)
    return removed


@worker_ready.connect
def sweep_tmp_on_worker_start(sender: Any = None, **kwargs: Any) -> None:
    """Sweep the store's tmp/ once when a worker starts, as the design asks.

    Run in the worker's own process rather than queued, so it happens before this worker
    takes a job, whatever else is waiting in the queue.
    """
    store_sweep_tmp()
