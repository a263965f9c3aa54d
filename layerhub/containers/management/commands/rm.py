"""``python manage.py rm CONTAINER...``: delete containers and their writable layers."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_lookup, container_rm
from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Remove containers (their images stay)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("containers", nargs="+")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in options["containers"]:
            try:
                user = self.acting_user(options)
                container_rm(container=container_lookup(name, user=user, action=CHANGE), user=user)
            except LayerhubError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(name)
