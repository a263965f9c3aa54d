"""``python manage.py create IMAGE [--name NAME] [--host HOST]``: a container over an image."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_create
from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Create a container (a writable layer) over an image, like docker create."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", help="reference, image ID or digest")
        parser.add_argument("--name", help="a name for the container")
        parser.add_argument(
            "--host",
            help="the host (LAYERHUB_HOST) that holds it; default: this one (LAYERHUB_HOST)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = self.acting_user(options)
            container = container_create(
                image=options["image"],
                name=options["name"],
                user=user,
                team=self.acting_team(options, user, CHANGE),
                host=options["host"],
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(container.container_id)
