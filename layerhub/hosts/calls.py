"""Short calls to a host: what a page or an API request needs done on a container's host
(write a file, run a command, list changes), run there while the request waits.

A call is a JSON message (an ID, an operation name, JSON parameters and a deadline) pushed onto
the host's call list in Redis, ``layerhub:calls:<LAYERHUB_QUEUE>.host.<host>``. Every worker of
that host answers from it with a ``CallServer``: LAYERHUB_HOST_CALL_THREADS threads of its main
process beside Celery's job slots, so a host whose slots are all busy with pulls, commits or a
garbage collection still answers at once. The answer goes to a Redis list named for the call,
which the caller pops with a timeout (LAYERHUB_HOST_CALL_TIMEOUT). A call whose deadline passed
before a thread took it is dropped, so a host that comes back does not run what nobody waits
for any more. On the caller's own host the operation runs in-process, through the same encoding
of parameters and answer (one code path).
"""

from __future__ import annotations

import base64
import importlib
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.db import connections

from layerhub.engine import errors as engine_errors
from layerhub.engine.errors import LayerhubError
from layerhub.hosts import routing
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import HostUnavailable

logger = logging.getLogger(__name__)

CALLS_PREFIX = "layerhub:calls:"
REPLY_PREFIX = "layerhub:reply:"
# an answer nobody popped (the caller timed out) expires; so does a host's call list this long
# after the timeout of the last call pushed onto it (every worker of the host stopped)
REPLY_TTL = 300
# how long a server thread waits on the call list before looking whether it should stop
POLL_SECONDS = 1.0
# the longest pause between a server thread's attempts to reach Redis while it is down
BACKOFF_MAX = 10.0
_CALL_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)

Operation = Callable[..., Any]
OPERATIONS: dict[str, Operation] = {}


class HostCallFailed(LayerhubError):
    """The operation failed on the host with an error that was not the user's (the host's
    log has the details)."""


def host_operation(name: str) -> Callable[[Operation], Operation]:
    """Register ``func`` as an operation a host runs by name; it takes and returns JSON."""

    def register(func: Operation) -> Operation:
        OPERATIONS[name] = func
        return func

    return register


def _error_class(name: str) -> type[LayerhubError]:
    found = getattr(engine_errors, name, None) or {
        "HostUnavailable": HostUnavailable,
        "HostCallFailed": HostCallFailed,
    }.get(name)
    if isinstance(found, type) and issubclass(found, LayerhubError):
        return found
    return LayerhubError


def _answer(op: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run ``op`` and encode its outcome: ``{"value": ...}`` or ``{"error": class, ...}``."""
    func = OPERATIONS.get(op)
    if func is None:
        return {"error": "HostCallFailed", "message": f"this host does not know {op!r}"}
    try:
        return {"value": func(**params)}
    except LayerhubError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}


def _decode(answer: dict[str, Any]) -> Any:
    if "error" in answer:
        raise _error_class(str(answer["error"]))(str(answer.get("message", "")))
    return answer.get("value")


def encode_bytes(data: bytes) -> str:
    """Bytes as a call carries them (parameters and answers are JSON): base64."""
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: object) -> bytes:
    """The bytes ``encode_bytes`` gave (anything else is a ValueError)."""
    return base64.b64decode(str(text).encode("ascii"), validate=True)


def reply_key(call_id: str) -> str:
    """The Redis list the answer of call ``call_id`` is pushed to."""
    return f"{REPLY_PREFIX}{call_id}"


def calls_key(host: str) -> str:
    """The Redis list the calls to ``host`` wait in, named for its host queue: two deployments
    on one Redis never answer each other's calls."""
    return f"{CALLS_PREFIX}{routing.host_queue(host)}"


def _client(timeout: float) -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=settings.LAYERHUB_BROKER_TIMEOUT,
        socket_timeout=timeout + settings.LAYERHUB_BROKER_TIMEOUT,
    )


def host_call(host: str, op: str, *, extra_timeout: float = 0.0, **params: Any) -> Any:
    """Run operation ``op`` with ``params`` on ``host`` and return its answer.

    Raises what the operation raised (a LayerhubError of the same class), HostUnavailable when
    the host's worker is gone or did not answer within LAYERHUB_HOST_CALL_TIMEOUT (plus
    ``extra_timeout``: an exec's own time limit), or BrokerUnavailable when Redis is down.
    """
    # the same JSON both ways, wherever it runs
    encoded = json.loads(json.dumps(params))
    if host == current_host():
        return _decode(json.loads(json.dumps(_answer(op, encoded))))
    routing.host_check(host)
    timeout = float(settings.LAYERHUB_HOST_CALL_TIMEOUT) + extra_timeout
    call_id = uuid.uuid4().hex
    call = {"id": call_id, "op": op, "params": encoded, "deadline": time.time() + timeout}
    from layerhub.jobs.services import BrokerUnavailable, broker_down_message

    client = _client(timeout)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.rpush(calls_key(host), json.dumps(call))
        pipe.expire(calls_key(host), math.ceil(timeout) + REPLY_TTL)
        pipe.execute()
        popped = client.blpop([reply_key(call_id)], timeout=max(1, round(timeout)))
    except (redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(broker_down_message(exc)) from None
    finally:
        client.close()
    if popped is None:
        why = routing.host_unavailable_message(host)
        raise HostUnavailable(why or f"host {host} did not answer within {timeout:g}s")
    return _decode(json.loads(popped[1]))


@dataclass(frozen=True)
class Call:
    """A call as a host's server took it off the list."""

    id: str
    op: str
    params: dict[str, Any]
    deadline: float


def call_parse(raw: bytes | str) -> Call | None:
    """The call in message ``raw``, or None (logged) when it is not one: anyone who can write
    to Redis can write to the list, so nothing in it is trusted."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        call_id, op, params, deadline = (doc.get(k) for k in ("id", "op", "params", "deadline"))
        if (
            isinstance(call_id, str)
            and _CALL_ID.fullmatch(call_id)
            and isinstance(op, str)
            and isinstance(params, dict)
            and isinstance(deadline, int | float)
            and not isinstance(deadline, bool)
            and math.isfinite(deadline)
        ):
            return Call(id=call_id, op=op, params=params, deadline=float(deadline))
    logger.warning("dropped a message that is not a call: %.200r", raw)
    return None


def call_serve(call: Call, client: redis.Redis) -> None:
    """Run ``call`` on this host, unless its caller stopped waiting, and push its answer.
    Raises redis.RedisError when the answer cannot be pushed."""
    if time.time() > call.deadline:
        logger.warning("dropped call %s (%s): its caller stopped waiting", call.id, call.op)
        return
    try:
        reply = json.dumps(_answer(call.op, call.params))
    except Exception as exc:
        logger.exception("call %s (%s) failed with an internal error", call.id, call.op)
        reply = json.dumps(
            {
                "error": "HostCallFailed",
                "message": f"internal error on host {current_host()}: {type(exc).__name__}: "
                f"{exc}; the host's worker log has the details",
            }
        )
    pipe = client.pipeline(transaction=False)
    pipe.rpush(reply_key(call.id), reply)
    pipe.expire(reply_key(call.id), REPLY_TTL)
    pipe.execute()


# the modules that register the operations a host answers (``host_operation``); a test checks
# that every module defining one is here
OPERATION_MODULES = (
    "layerhub.containers.files",
    "layerhub.containers.services",
    "layerhub.images.services.packages",
    "layerhub.images.snapshot_files",
)


def operations_load() -> None:
    """Register every host operation (what a call server imports before answering)."""
    for name in OPERATION_MODULES:
        importlib.import_module(name)


class CallServer:
    """Threads that answer this host's calls until ``stop``: a worker runs one in its main
    process (its pool's children never do), beside Celery's job slots.

    Each thread takes a call off the list only when it is free, so calls wait in Redis (where
    any worker of the host may take them) rather than behind a busy thread. A thread that
    loses Redis logs it, waits (doubling the pause up to ``backoff_max``) and tries again.
    Each thread closes its database connections after every call.
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        threads: int | None = None,
        poll: float = POLL_SECONDS,
        backoff_max: float = BACKOFF_MAX,
    ) -> None:
        self.host = host or current_host()
        self.key = calls_key(self.host)
        self.poll = poll
        self.backoff_max = backoff_max
        self._stop = threading.Event()
        # the deadline of the call each thread is answering (by thread name): stop waits for
        # a running call until its caller stops waiting, no longer
        self._deadlines: dict[str, float] = {}
        count = threads or int(settings.LAYERHUB_HOST_CALL_THREADS)
        self.threads = [
            threading.Thread(target=self._serve, name=f"layerhub-call-{n}", daemon=True)
            for n in range(count)
        ]

    def start(self) -> None:
        """Start answering."""
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Take no more calls, and wait for the running ones while their callers wait."""
        self._stop.set()
        margin = self.poll + float(settings.LAYERHUB_BROKER_TIMEOUT)
        for thread in self.threads:
            thread.join(margin)  # an idle thread sees the stop within its poll
            running_for = self._deadlines.get(thread.name, 0.0) - time.time()
            if thread.is_alive() and running_for > 0:
                thread.join(running_for)
            if thread.is_alive():
                logger.warning("%s is still answering a call as the worker stops", thread.name)

    def _serve(self) -> None:
        name = threading.current_thread().name
        client = _client(self.poll)
        pause = 0.0
        try:
            while not self._stop.is_set():
                try:
                    popped = client.blpop([self.key], timeout=self.poll)
                    if popped is not None:
                        self._take(name, popped[1], client)
                except redis.RedisError as exc:
                    pause = min(self.backoff_max, pause * 2 or self.poll / 2)
                    logger.warning(
                        "calls to host %s: Redis does not answer (%s); trying again in %gs",
                        self.host,
                        " ".join(str(exc).split()) or type(exc).__name__,
                        pause,
                    )
                    self._stop.wait(pause)
                    continue
                except Exception:
                    logger.exception("calls to host %s: a call failed unexpectedly", self.host)
                if pause:
                    logger.info("calls to host %s: Redis answers again", self.host)
                    pause = 0.0
        finally:
            client.close()

    def _take(self, name: str, raw: bytes | str, client: redis.Redis) -> None:
        call = call_parse(raw)
        if call is None:
            return
        self._deadlines[name] = call.deadline
        try:
            call_serve(call, client)
        finally:
            self._deadlines[name] = 0.0
            # this thread's own connections: Django opens one per thread and never closes it
            connections.close_all()
