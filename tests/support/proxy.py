"""A faulty front for a real registry: forwards every request, counts blob downloads, records
when each request was in flight, and can cut a blob's body short or slow it down, the way a
registry that dies mid-download does."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.support.registry import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass
class Window:
    """One request as the proxy saw it: from its arrival to the end of its body (monotonic)."""

    method: str
    path: str
    start: float
    end: float = float("inf")  # still in flight

    @property
    def repository(self) -> str:
        """``team/app`` for ``/v2/team/app/blobs/...``; empty for ``/v2/`` itself."""
        parts = self.path.split("?", 1)[0].split("/")
        for i, part in enumerate(parts):
            if part in ("blobs", "manifests") and i > 2:
                return "/".join(parts[2:i])
        return ""

    def overlaps(self, other: Window) -> bool:
        return self.start < other.end and other.start < self.end


class FaultyProxy:
    """``host`` answers like ``upstream``, except where a fault is set for a blob."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.blob_gets: Counter[str] = Counter()
        self.cuts: dict[str, tuple[int, int]] = {}  # digest -> (after bytes, times left)
        self.delay = 0.0  # seconds to sleep before each blob body
        self.windows: list[Window] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                with proxy.in_flight(self.command, self.path):
                    self.forward(body=False)

            def do_GET(self) -> None:
                # the client may go away mid-body (a killed worker, a cut we made)
                with (
                    proxy.in_flight(self.command, self.path),
                    contextlib.suppress(BrokenPipeError, ConnectionResetError),
                ):
                    self.forward(body=True)

            def forward(self, *, body: bool) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = requests.request(
                    self.command,
                    f"http://{proxy.upstream}{self.path}",
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=30,
                )
                digest = ""
                if "/blobs/sha256:" in self.path and self.command == "GET":
                    digest = self.path.rsplit("/", 1)[-1]
                    with proxy.lock:
                        proxy.blob_gets[digest] += 1
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.end_headers()
                if not body:
                    return
                cut_after = None
                with proxy.lock:
                    fault = proxy.cuts.get(digest)
                    if fault and fault[1] > 0:
                        cut_after = fault[0]
                        proxy.cuts[digest] = (fault[0], fault[1] - 1)
                if digest and proxy.delay:
                    time.sleep(proxy.delay)
                sent = 0
                for chunk in upstream.raw.stream(64 * 1024, decode_content=False):
                    if cut_after is not None and sent + len(chunk) > cut_after:
                        self.wfile.write(chunk[: max(cut_after - sent, 0)])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @contextlib.contextmanager
    def in_flight(self, method: str, path: str) -> Iterator[None]:
        """Record the request's window while the body runs."""
        window = Window(method, path, time.monotonic())
        with self.lock:
            self.windows.append(window)
        try:
            yield
        finally:
            window.end = time.monotonic()

    def overlapping(self, repo_a: str, repo_b: str) -> list[tuple[Window, Window]]:
        """Pairs of requests for the two repositories that were in flight at the same time."""
        with self.lock:
            windows = list(self.windows)
        a = [w for w in windows if w.repository == repo_a]
        b = [w for w in windows if w.repository == repo_b]
        return [(x, y) for x in a for y in b if x.overlaps(y)]

    def cut(self, digest: str, after: int, times: int) -> None:
        """Cut the next ``times`` downloads of ``digest`` after ``after`` bytes."""
        with self.lock:
            self.cuts[digest] = (after, times)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
