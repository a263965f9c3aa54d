"""A faulty front for a real registry: forwards every request, counts blob downloads, and can
cut a blob's body short or slow it down, the way a registry that dies mid-download does."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.support.registry import free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}


class FaultyProxy:
    """``host`` answers like ``upstream``, except where a fault is set for a blob."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.blob_gets: Counter[str] = Counter()
        self.cuts: dict[str, tuple[int, int]] = {}  # digest -> (after bytes, times left)
        self.delay = 0.0  # seconds to sleep before each blob body
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.forward(body=False)

            def do_GET(self) -> None:
                # the client may go away mid-body (a killed worker, a cut we made)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
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

    def cut(self, digest: str, after: int, times: int) -> None:
        """Cut the next ``times`` downloads of ``digest`` after ``after`` bytes."""
        with self.lock:
            self.cuts[digest] = (after, times)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
