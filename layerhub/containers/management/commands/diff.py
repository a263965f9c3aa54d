"""``python manage.py diff CONTAINER``: what changed, as ``docker diff`` prints it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_diff, container_lookup
from layerhub.engine.errors import LayerhubError
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "List the paths a container added (A), changed (C) and deleted (D)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("container")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            container = container_lookup(options["container"], user=self.acting_user(options))
            changes = container_diff(container=container)
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        for change in changes:
            self.stdout.write(f"{change.kind} {change.path}")
