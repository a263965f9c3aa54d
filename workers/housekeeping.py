"""What every worker's main process does in the background while it runs.

Every LAYERHUB_JOB_HEARTBEAT seconds: record that this worker is alive and which queues it
takes jobs from (layerhub.jobs.presence, read by the CLI and pages to say whether anyone will
run a queued job), stamp this host's heartbeat (free disk, snapshot cache: layerhub.hosts),
re-queue jobs whose worker is gone (``Job.objects.reap_dead``): the workers that are alive
pick up the work of the ones that died; and fail the jobs queued for a host that is gone.
With LAYERHUB_SNAPSHOT_CACHE_MAX set, as often, keep this host's snapshot cache under it
(layerhub.images.snapshot_cache), on a thread of its own: deleting trees takes the time it
takes, and the heartbeat must not wait for it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import redis
from django.conf import settings
from django.db import DatabaseError, connections

from layerhub.hosts.routing import jobs_stranded_fail
from layerhub.hosts.services import host_heartbeat, host_leave
from layerhub.images.snapshot_cache import snapshot_cache_trim
from layerhub.jobs.models import Job
from layerhub.jobs.presence import presence_client, worker_announce, worker_leave

logger = logging.getLogger(__name__)


class Housekeeper:
    """Daemon threads until ``stop``: the presence record (Redis), the host's heartbeat with
    the dead-job sweep (the database), and with a snapshot cache limit, its eviction."""

    def __init__(self, *, name: str, queues: list[str]) -> None:
        self.name = f"{name}:{os.getpid()}"
        self.queues = queues
        self.interval = float(settings.LAYERHUB_JOB_HEARTBEAT)
        self._stop = threading.Event()
        # presence in Redis on a thread of its own: a database write waiting on a lock (SQLite
        # under load) must not make a live worker look gone
        self._presence = threading.Thread(
            target=self._loop, args=(self.announce,), name="layerhub-presence", daemon=True
        )
        self._thread = threading.Thread(
            target=self._loop, args=(self.tick,), name="layerhub-housekeeping", daemon=True
        )
        self._threads = [self._presence, self._thread]
        if settings.LAYERHUB_SNAPSHOT_CACHE_MAX:
            self._threads.append(
                threading.Thread(
                    target=self._loop, args=(self.trim,), name="layerhub-cache", daemon=True
                )
            )

    def start(self) -> None:
        """Announce this worker at once, then keep doing so in the background."""
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop the threads, withdraw the presence record and mark the host stopped (the
        worker is shutting down)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.interval + 5)
        try:
            host_leave()
        except DatabaseError:
            pass  # its heartbeat ages out by itself
        finally:
            connections.close_all()
        try:
            client = presence_client()
            try:
                worker_leave(client, queues=self.queues, name=self.name)
            finally:
                client.close()
        except redis.RedisError:
            pass  # the record expires by itself

    def announce(self) -> None:
        """Record this worker's presence in Redis. Failures are logged, never raised."""
        try:
            client = presence_client()
            try:
                worker_announce(client, queues=self.queues, name=self.name)
            finally:
                client.close()
        except redis.RedisError as exc:
            logger.warning("could not record this worker's presence in Redis: %s", exc)

    def tick(self) -> None:
        """One round of the database's part: this host's heartbeat, the dead-job sweep, the
        jobs of hosts that are gone. Failures are logged, never raised."""
        try:
            host_heartbeat()
        except DatabaseError as exc:
            logger.warning("could not record this host's heartbeat: %s", exc)
        except Exception:
            logger.exception("recording this host's heartbeat failed")
        try:
            Job.objects.reap_dead()
            jobs_stranded_fail()
        except DatabaseError as exc:
            logger.warning("could not look for jobs whose worker died: %s", exc)
        except Exception:
            logger.exception("looking for jobs whose worker died failed")
        finally:
            # Not left open in the main process, whose pool children are forked from it.
            connections.close_all()

    def trim(self) -> None:
        """Evict from this host's snapshot cache while it is past its limit (failures are
        logged by the eviction itself)."""
        try:
            snapshot_cache_trim()
        finally:
            connections.close_all()

    def _loop(self, work: Callable[[], None]) -> None:
        while True:
            work()
            if self._stop.wait(self.interval):
                return
