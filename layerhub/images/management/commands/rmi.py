"""``python manage.py rmi IMAGE...``: untag and delete images, like ``docker rmi``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.engine.errors import LayerhubError
from layerhub.images.services.transfer import image_remove
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = "Remove images: untag, and delete layers no other image uses."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument("-f", "--force", action="store_true", help="remove every tag")

    def handle(self, *args: Any, **options: Any) -> None:
        for text in options["images"]:
            try:
                lines = image_remove(image=text, force=options["force"])
            except LayerhubError as exc:
                raise CommandError(str(exc)) from None
            for line in lines:
                self.stdout.write(line)
