"""A forwarding proxy on loopback that speaks CONNECT, what an HTTPS request through
``HTTPS_PROXY`` uses: it opens a TCP tunnel to the target and copies bytes both ways, never
seeing inside the TLS. It records every tunnel's target, so a test can tell which requests
went through it. Anything but CONNECT is answered 405."""

from __future__ import annotations

import contextlib
import select
import socket
import socketserver
import threading
from collections.abc import Iterator

from tests.support.registry import free_port

_MAX_HEAD = 16 * 1024


class ConnectProxy:
    """A CONNECT proxy on ``127.0.0.1:port``; ``tunnels`` lists each target (``host:port``)
    in the order asked."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tunnels: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client: socket.socket = self.request
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
                    piece = client.recv(4096)
                    if not piece:
                        return
                    head += piece
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                method, _, rest = line.partition(" ")
                target = rest.partition(" ")[0]
                if method != "CONNECT" or ":" not in target:
                    client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                    return
                with proxy.lock:
                    proxy.tunnels.append(target)
                host, _, port = target.rpartition(":")
                try:
                    upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
                except OSError:
                    client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                with upstream:
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    extra = head.split(b"\r\n\r\n", 1)[1]
                    if extra:
                        upstream.sendall(extra)
                    _pipe(client, upstream)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (or nothing moves for a minute)."""
    sockets = [a, b]
    while True:
        ready, _, _ = select.select(sockets, [], [], 60)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            other = b if sock is a else a
            try:
                other.sendall(data)
            except OSError:
                return


@contextlib.contextmanager
def connect_proxy() -> Iterator[ConnectProxy]:
    """A CONNECT proxy for the length of a ``with``."""
    proxy = ConnectProxy()
    try:
        yield proxy
    finally:
        proxy.stop()
