"""``python manage.py commit [-m MSG] [-a AUTHOR] [-c INSTRUCTION]... CONTAINER [REPO[:TAG]]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.containers.services import container_commit, container_lookup
from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Commit a container's changes as a new image, like docker commit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("container")
        parser.add_argument("repository", nargs="?", help="REPO[:TAG] for the new image")
        parser.add_argument("-m", "--message", default="", help="commit message")
        parser.add_argument("-a", "--author", default="", help='e.g. "Ada <ada@example.com>"')
        parser.add_argument(
            "-c", "--change", action="append", default=[], help="CMD, ENV, LABEL... instruction"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = container_commit(
                container=container_lookup(
                    options["container"], user=self.acting_user(options), action=CHANGE
                ),
                user=self.acting_user(options),
                repository=options["repository"],
                message=options["message"],
                author=options["author"],
                changes=options["change"],
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        last = follow_to_end(job, self.stdout, self.stderr, what="commit")
        if last.image is not None:
            self.stdout.write(last.image.config_digest)
