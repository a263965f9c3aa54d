"""``python manage.py save IMAGE... -o FILE [--format docker|oci]``: like ``docker save``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from layerhub.engine.errors import LayerhubError
from layerhub.images.services.transfer import image_save
from layerhub.jobs.follow import follow_to_end


class Command(BaseCommand):
    help = "Export images as a docker save archive or an OCI layout tar."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument("-o", "--output", required=True, help="the tar file to write")
        parser.add_argument("--format", choices=["docker", "oci"], default="docker")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = image_save(
                images=options["images"], path=options["output"], format=options["format"]
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        follow_to_end(job, self.stdout, self.stderr, what="export")
