"""``python manage.py exec CONTAINER -- CMD...``: run a command in a container."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_exec, container_lookup
from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.engine.runtime.signals import Interrupted, signals_raise
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Run a command in a container and wait for it (non-interactive docker exec)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
        parser.add_argument("--network", action="store_true", help="give it the host's network")
        parser.add_argument("container")
        # everything after the container is the command, options included (`-- sh -c ...`)
        parser.add_argument("argv", nargs=argparse.REMAINDER, help="the command")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = list(options["argv"])
        if argv[:1] == ["--"]:
            argv = argv[1:]
        if not argv:
            raise CommandError("exec needs a command: exec CONTAINER -- CMD [ARG...]")
        try:
            # SIGTERM (as `timeout` sends) and Ctrl-C stop the command in the container and
            # take down its mount before this process ends, never after it
            with signals_raise():
                result = container_exec(
                    container=container_lookup(
                        options["container"], user=self.acting_user(options), action=CHANGE
                    ),
                    argv=argv,
                    timeout=options["timeout"],
                    network=options["network"],
                )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        except Interrupted as exc:
            self.stderr.write(f"exec: {exc}: the command was stopped in the container")
            raise SystemExit(exc.exit_code) from None
        self.stdout.flush()
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        sys.stderr.flush()
        if result.exit_code:
            raise SystemExit(result.exit_code)
