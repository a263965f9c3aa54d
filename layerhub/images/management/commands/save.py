"""``python manage.py save IMAGE... -o FILE [--format docker|oci]``: like ``docker save``."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.engine.errors import LayerhubError
from layerhub.images.services.transfer import image_save, image_save_stream
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Export images as a docker save archive or an OCI layout tar."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument(
            "-o", "--output", required=True, help="the tar file to write, or - for standard output"
        )
        parser.add_argument("--format", choices=["docker", "oci"], default="docker")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["output"] == "-":
            self._to_stdout(options)
            return
        try:
            job = image_save(
                images=options["images"],
                path=options["output"],
                format=options["format"],
                user=self.acting_user(options),
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        follow_to_end(job, self.stdout, self.stderr, what="export")

    def _to_stdout(self, options: dict[str, Any]) -> None:
        # written here rather than by a worker: a worker cannot reach this process's stdout
        out = sys.stdout.buffer
        if out.isatty():
            raise CommandError(
                "refusing to write an archive to a terminal: redirect -o - or use -o FILE"
            )
        try:
            image_save_stream(
                images=options["images"],
                out=out,
                format=options["format"],
                user=self.acting_user(options),
            )
            out.flush()
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        except BrokenPipeError:
            # the reader went away (`save -o - | head`): no traceback, and no second error
            # when Python flushes stdout on the way out
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
            raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell reports
