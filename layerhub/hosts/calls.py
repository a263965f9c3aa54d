"""Short calls to a host: what a page or an API request needs done on a container's host
(write a file, run a command, list changes), run there by its worker while the request waits.

A call is a Celery task on the host's queue carrying an operation name, JSON parameters and
a deadline; the worker runs the operation and pushes its JSON answer to a Redis list named for
the call, which the caller pops with a timeout (LAYERHUB_HOST_CALL_TIMEOUT). A call whose
deadline passed before a worker took it is dropped, so a host that comes back does not run
what nobody waits for any more. On the caller's own host the operation runs in-process,
through the same encoding of parameters and answer (one code path).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu.exceptions
import redis
from celery import current_app
from django.conf import settings

from layerhub.engine import errors as engine_errors
from layerhub.engine.errors import LayerhubError
from layerhub.hosts import routing
from layerhub.hosts.models import current_host
from layerhub.hosts.routing import HostUnavailable

logger = logging.getLogger(__name__)

CALL_TASK = "layerhub.host_call"
REPLY_PREFIX = "layerhub:reply:"
# an answer nobody popped (the caller timed out) expires
REPLY_TTL = 300

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


def reply_key(call_id: str) -> str:
    """The Redis list the answer of call ``call_id`` is pushed to."""
    return f"{REPLY_PREFIX}{call_id}"


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
    deadline = time.time() + timeout
    from layerhub.jobs.services import BrokerUnavailable, broker_down_message

    client = _client(timeout)
    try:
        current_app.send_task(
            CALL_TASK, args=(call_id, op, encoded, deadline), queue=routing.host_queue(host)
        )
        popped = client.blpop([reply_key(call_id)], timeout=max(1, round(timeout)))
    except (kombu.exceptions.OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(broker_down_message(exc)) from None
    finally:
        client.close()
    if popped is None:
        why = routing.host_unavailable_message(host)
        raise HostUnavailable(why or f"host {host} did not answer within {timeout:g}s")
    return _decode(json.loads(popped[1]))


def host_call_run(call_id: str, op: str, params: dict[str, Any], deadline: float) -> None:
    """The worker's side of a call: run it (unless its caller gave up) and push the answer."""
    if time.time() > deadline:
        logger.warning("dropped call %s (%s): its caller stopped waiting", call_id, op)
        return
    try:
        answer = _answer(op, params)
    except Exception as exc:
        logger.exception("call %s (%s) failed with an internal error", call_id, op)
        answer = {
            "error": "HostCallFailed",
            "message": f"internal error on host {current_host()}: {type(exc).__name__}: {exc}; "
            "the host's worker log has the details",
        }
    client = _client(float(settings.LAYERHUB_BROKER_TIMEOUT))
    try:
        pipe = client.pipeline()
        pipe.rpush(reply_key(call_id), json.dumps(answer))
        pipe.expire(reply_key(call_id), REPLY_TTL)
        pipe.execute()
    finally:
        client.close()
