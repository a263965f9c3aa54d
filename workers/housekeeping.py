"""What every worker's main process does in the background while it runs.

Every LAYERHUB_JOB_HEARTBEAT seconds: record that this worker is alive and which queues it
takes jobs from (layerhub.jobs.presence, read by the CLI and pages to say whether anyone will
run a queued job), and re-queue jobs whose worker is gone (``Job.objects.reap_dead``): the
workers that are alive pick up the work of the ones that died.
"""

from __future__ import annotations

import logging
import os
import threading

import redis
from django.conf import settings
from django.db import DatabaseError, connections

from layerhub.jobs.models import Job
from layerhub.jobs.presence import presence_client, worker_announce, worker_leave

logger = logging.getLogger(__name__)


class Housekeeper:
    """A daemon thread: presence record and dead-job sweep, until ``stop``."""

    def __init__(self, *, name: str, queues: list[str]) -> None:
        self.name = f"{name}:{os.getpid()}"
        self.queues = queues
        self.interval = float(settings.LAYERHUB_JOB_HEARTBEAT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layerhub-housekeeping", daemon=True)

    def start(self) -> None:
        """Announce this worker at once, then keep doing so in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and withdraw the presence record (the worker is shutting down)."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            client = presence_client()
            try:
                worker_leave(client, queues=self.queues, name=self.name)
            finally:
                client.close()
        except redis.RedisError:
            pass  # the record expires by itself

    def tick(self) -> None:
        """One round: presence, then the dead-job sweep. Failures are logged, never raised."""
        try:
            client = presence_client()
            try:
                worker_announce(client, queues=self.queues, name=self.name)
            finally:
                client.close()
        except redis.RedisError as exc:
            logger.warning("could not record this worker's presence in Redis: %s", exc)
        try:
            Job.objects.reap_dead()
        except DatabaseError as exc:
            logger.warning("could not look for jobs whose worker died: %s", exc)
        except Exception:
            logger.exception("looking for jobs whose worker died failed")
        finally:
            # Not left open in the main process, whose pool children are forked from it.
            connections.close_all()

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.interval):
                return
