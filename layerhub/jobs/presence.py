"""Which workers take this deployment's jobs: a presence record each worker keeps in Redis.

A worker adds itself to a sorted set named after the queue it consumes, scored with the time,
every LAYERHUB_JOB_HEARTBEAT seconds, and removes itself when it stops. Anyone asking "does a
worker take my jobs?" reads that set: one round trip, no broadcast. A Celery ``ping`` instead
waits its whole timeout for replies and is answered by every worker on the Redis database,
other deployments' included.
"""

from __future__ import annotations

import time

import redis
from django.conf import settings

PREFIX = "layerhub:workers:"


def presence_key(queue: str) -> str:
    """The Redis key of the workers that consume ``queue``."""
    return f"{PREFIX}{queue}"


def _fresh_for() -> float:
    # three missed stamps in a row, and the worker is taken for gone
    return 3 * settings.LAYERHUB_JOB_HEARTBEAT


def presence_client() -> redis.Redis:
    """A Redis client for the broker, failing within LAYERHUB_BROKER_TIMEOUT when it is down."""
    timeout = settings.LAYERHUB_BROKER_TIMEOUT
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout
    )


def worker_announce(client: redis.Redis, *, queues: list[str], name: str) -> None:
    """Record that worker ``name`` is alive and consuming ``queues`` (called periodically)."""
    now = time.time()
    ttl = max(1, int(_fresh_for()) + 1)
    pipe = client.pipeline()
    for queue in queues:
        key = presence_key(queue)
        pipe.zadd(key, {name: now})
        pipe.zremrangebyscore(key, "-inf", now - _fresh_for())
        pipe.expire(key, ttl)  # a deployment whose workers all died leaves no key behind
    pipe.execute()


def worker_leave(client: redis.Redis, *, queues: list[str], name: str) -> None:
    """Remove worker ``name``'s record (it is stopping)."""
    pipe = client.pipeline()
    for queue in queues:
        pipe.zrem(presence_key(queue), name)
    pipe.execute()


def workers_present(queue: str, client: redis.Redis | None = None) -> list[str]:
    """The workers that consume ``queue`` and were alive lately. Raises redis.RedisError when
    the broker does not answer."""
    own = client is None
    client = client or presence_client()
    try:
        names = client.zrangebyscore(presence_key(queue), time.time() - _fresh_for(), "+inf")
    finally:
        if own:
            client.close()
    return sorted(name.decode() if isinstance(name, bytes) else str(name) for name in names)


def queues_served(client: redis.Redis | None = None) -> list[str]:
    """Every queue on this Redis database that some live worker consumes (to tell a user
    whose jobs wait that workers exist, but serve another deployment)."""
    own = client is None
    client = client or presence_client()
    queues = []
    try:
        for key in client.scan_iter(match=f"{PREFIX}*", count=500):
            name = key.decode() if isinstance(key, bytes) else str(key)
            queue = name.removeprefix(PREFIX)
            if workers_present(queue, client):
                queues.append(queue)
    finally:
        if own:
            client.close()
    return sorted(queues)
