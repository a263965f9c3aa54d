"""``python manage.py create IMAGE [--name NAME]``: a container over an image."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_create
from layerhub.engine.errors import LayerhubError
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = "Create a container (a writable layer) over an image, like docker create."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", help="reference, image ID or digest")
        parser.add_argument("--name", help="a name for the container")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            container = container_create(image=options["image"], name=options["name"])
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(container.container_id)
