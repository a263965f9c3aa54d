"""Bounds on what a registry can make the client wait for or hold in memory.

A socket timeout bounds the wait for *each* read, not for a whole document: a peer sending one
byte every few seconds never trips it. So every small exchange (a manifest, a config, a token,
an error body) runs under a :class:`Deadline`, a watchdog that shuts the socket of the request
in flight when the deadline passes; the blocked read then fails at once and the client turns
it into a RegistryTimeout. Large blobs have no total deadline (a slow link is not an error);
they fail when no byte arrives for the stall period (the socket read timeout).

Bodies are read through :func:`read_capped`, which stops reading at the cap, so an endless
body costs at most the cap in memory.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from contextlib import suppress
from typing import Any

import requests
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

# what a read can raise once the watchdog has shut the socket (or the peer went away)
READ_ERRORS = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    OSError,
)
_PIECE = 64 * 1024
_local = threading.local()


class Deadline:
    """A watchdog for one small exchange: past ``until`` (a ``time.monotonic()`` value), the
    connection the current thread is using is shut down. Nested deadlines keep the earlier
    end; only the innermost one watches."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.until = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._connection: HTTPConnection | None = None
        self._previous: Deadline | None = None
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Deadline:
        self._previous = current_deadline()
        if self._previous is not None and self._previous.until < self.until:
            self.until = self._previous.until
            self.seconds = self._previous.seconds
        _local.deadline = self
        self._timer = threading.Timer(max(self.until - time.monotonic(), 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._connection = None
        _local.deadline = self._previous

    @property
    def passed(self) -> bool:
        """Whether the deadline has passed (the watchdog may not have fired yet)."""
        return self.expired or time.monotonic() >= self.until

    def remaining(self) -> float:
        """Seconds left, never below a small positive floor (a socket timeout of 0 would
        mean non-blocking)."""
        return max(self.until - time.monotonic(), 0.001)

    def attach(self, connection: HTTPConnection) -> None:
        """Watch ``connection``: the one the current thread sends its next request on."""
        with self._lock:
            self._connection = connection
            expired = self.expired
        if expired:
            _shut(connection)
        if self._previous is not None:  # an enclosing exchange is cut at its end too
            self._previous.attach(connection)

    def watch(self, response: requests.Response) -> None:
        """Watch the connection ``response`` is read from (its body is read after the
        request that attached it)."""
        connection = getattr(response.raw, "connection", None)
        if isinstance(connection, HTTPConnection):
            self.attach(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            connection = self._connection
        if connection is not None:
            _shut(connection)


def current_deadline() -> Deadline | None:
    """The deadline the current thread is working under, if any."""
    deadline: Deadline | None = getattr(_local, "deadline", None)
    return deadline


def _shut(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = current_deadline()
        if deadline is not None:
            deadline.attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = current_deadline()
        if deadline is not None:
            deadline.attach(self)
        super().request(*args, **kwargs)


class _WatchedPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


# the pool classes a session's pool managers use, so a Deadline can cut their connections
WATCHED_POOLS: dict[str, type[HTTPConnectionPool]] = {
    "http": _WatchedPool,
    "https": _WatchedHTTPSPool,
}


class BodyTooLarge(Exception):
    """A body past its cap (internal: callers turn it into a typed error naming what)."""


def read_capped(response: requests.Response, cap: int) -> bytes:
    """The body of a streamed response, decoded, reading at most ``cap + 1`` bytes: raises
    BodyTooLarge beyond ``cap``. Read errors propagate (callers know what they were reading)."""
    parts: list[bytes] = []
    total = 0
    while total <= cap:
        piece = response.raw.read(min(_PIECE, cap + 1 - total), decode_content=True)
        if not piece:
            break
        parts.append(piece)
        total += len(piece)
    if total > cap:
        raise BodyTooLarge(total)
    return b"".join(parts)
