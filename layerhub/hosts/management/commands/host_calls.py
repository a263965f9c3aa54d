"""``python manage.py host_calls``: answer this host's calls until stopped (SIGTERM).

A worker starts it itself (layerhub.hosts.call_process); run by hand, it answers the calls
of LAYERHUB_HOST beside a worker started without one.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from layerhub.hosts.calls import POLL_SECONDS, CallServer, operations_load


class Command(BaseCommand):
    help = "Answer this host's calls (a worker starts this itself)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--parent",
            type=int,
            default=None,
            help="stop when the process with this ID (the worker that started it) is gone",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        operations_load()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server = CallServer()
        server.start()
        self.stdout.write(
            f"answering the calls to host {server.host} with {len(server.threads)} threads"
        )
        parent = options["parent"]
        while not stop.wait(POLL_SECONDS):
            if parent is not None and os.getppid() != parent:
                self.stderr.write("the worker that started this call server is gone: stopping")
                break
        server.stop()
