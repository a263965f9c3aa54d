"""The process that answers a host's calls, beside its worker's job slots.

A worker starts it when it is ready (``CallServerProcess``, in the worker's main process) and
stops it when it stops; it runs ``manage.py host_calls``, a ``CallServer`` (calls.py) in a
process of its own, started afresh rather than forked. Own process, because a call may read
blobs from the object store (a container's create unpacks the snapshots its host lacks), and
a process that has used the object store's client must never fork a worker's pool child (see
``engine.blobstore.s3``): the worker's main process, which forks the pool, stays clean.

The call server leaves when its worker is gone (it watches its parent), and the worker starts
it again if it ends on its own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"
# pauses before starting a call server that ended on its own again (doubling up to the max)
RESTART_PAUSE = 1.0
RESTART_PAUSE_MAX = 30.0


class CallServerProcess:
    """``manage.py host_calls`` as a child of this (the worker's main) process, started again
    whenever it ends on its own, until ``stop``."""

    def __init__(self) -> None:
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="call-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, str(MANAGE), "host_calls", "--parent", str(os.getpid())]
        # a session of its own: a signal to the worker's group (Ctrl-C) reaches the worker,
        # which stops this server itself, after the calls under way
        return subprocess.Popen(argv, cwd=MANAGE.parent, close_fds=True, start_new_session=True)

    def _supervise(self) -> None:
        pause = RESTART_PAUSE
        while not self._stopping.is_set():
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    self._proc = proc = self._spawn()
                except OSError as exc:
                    logger.error("cannot start the call server: %s", exc)
                    proc = None
            code = None if proc is None else proc.wait()
            if self._stopping.is_set():
                return
            logger.error(
                "the call server of host %s ended (exit %s); starting it again in %gs",
                settings.LAYERHUB_HOST,
                code,
                pause,
            )
            self._stopping.wait(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)

    def stop(self) -> None:
        """Stop the call server: it takes no more calls and finishes those running while
        their callers still wait (LAYERHUB_HOST_CALL_TIMEOUT at most), then ends."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        grace = float(settings.LAYERHUB_HOST_CALL_TIMEOUT) + float(settings.LAYERHUB_BROKER_TIMEOUT)
        try:
            proc.wait(grace + 5)
        except subprocess.TimeoutExpired:
            logger.warning("the call server did not stop within %gs: killed", grace + 5)
            proc.kill()
            proc.wait()
