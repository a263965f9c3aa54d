"""Hostile HTTP servers on loopback: each answers with a function the test gives, and records
what it was sent, so a test can script a registry that redirects, trickles, never ends a body,
or asks for a login it has no business asking for."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support.registry import free_port


@dataclass
class Seen:
    """One request a server got."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Server:
    """A loopback HTTP server whose ``answer(request, seen)`` writes every response.
    ``sent`` counts body bytes written by ``stream``."""

    answer: Callable[[Request], None]
    seen: list[Seen] = field(default_factory=list)
    sent: int = 0

    def __post_init__(self) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def handle_one(self) -> None:
                with server.lock:
                    server.seen.append(Seen(self.command, self.path, dict(self.headers)))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, OSError):
                    server.answer(Request(self, server))

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def authorizations(self) -> list[str]:
        """Every Authorization header this server was sent."""
        with self.lock:
            return [s.headers["Authorization"] for s in self.seen if "Authorization" in s.headers]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Request:
    """The request being answered, with helpers to answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: Server) -> None:
        self.handler = handler
        self.server = server
        self.method = handler.command
        self.path = handler.path
        self.headers = handler.headers

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """A whole response with a Content-Length."""
        h = self.handler
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if self.method != "HEAD":
            h.wfile.write(body)
        h.wfile.flush()

    def send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self.send(
            status,
            json.dumps(doc).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def stream(
        self,
        status: int,
        pieces: Iterable[bytes],
        headers: dict[str, str] | None = None,
        *,
        length: int | None = None,
        pause: float = 0.0,
        close: bool = False,
    ) -> None:
        """Headers, then ``pieces`` one by one (``pause`` seconds apart), counted in
        ``server.sent``; with no ``length`` the body ends when the connection closes, and
        ``close`` closes it after the pieces whatever the length said (a cut body)."""
        h = self.handler
        h.close_connection = close
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        if length is not None:
            h.send_header("Content-Length", str(length))
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        h.wfile.flush()
        for piece in pieces:
            if pause:
                time.sleep(pause)
            h.wfile.write(piece)
            h.wfile.flush()
            with self.server.lock:
                self.server.sent += len(piece)

    def trickle_headers(self, status: int, headers: dict[str, str], pause: float) -> None:
        """A status line and headers sent a byte at a time, ``pause`` seconds apart."""
        raw = f"HTTP/1.1 {status} OK\r\n".encode()
        raw += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
        self.handler.close_connection = True
        for byte in raw:
            self.handler.wfile.write(bytes([byte]))
            self.handler.wfile.flush()
            time.sleep(pause)


@contextlib.contextmanager
def serve(answer: Callable[[Request], None]) -> Iterator[Server]:
    """A hostile server for the length of a ``with``."""
    server = Server(answer)
    try:
        yield server
    finally:
        server.stop()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def endless(piece: bytes = b"x" * 65536, limit: int | None = None) -> Iterator[bytes]:
    """A body that never ends (or ends after ``limit`` bytes)."""
    sent = 0
    while limit is None or sent < limit:
        yield piece
        sent += len(piece)
