"""``python manage.py login HOST -u USER``: store a registry login, like ``docker login``."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import MANAGE
from layerhub.engine.errors import LayerhubError
from layerhub.images.services import registry_login
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Check and store a login for a registry (the password is kept encrypted)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("host", help="registry host[:port], e.g. ghcr.io")
        parser.add_argument("-u", "--username", required=True)
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        parser.add_argument(
            "--insecure", action="store_true", help="talk plain HTTP to this registry"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["password_stdin"]:
            password = sys.stdin.readline().rstrip("\n")
        elif not sys.stdin.isatty():
            # getpass would read the password from a pipe with a warning about echo, or
            # wait on a terminal nobody watches
            raise CommandError(
                "no terminal to ask the password on: pass it on standard input, e.g. "
                f'`echo "$TOKEN" | manage.py login {options["host"]} '
                f"-u {options['username']} --password-stdin`"
            )
        else:
            try:
                password = getpass.getpass("Password: ")
            except (EOFError, KeyboardInterrupt):
                raise CommandError("login cancelled") from None
        user = self.acting_user(options)
        team = self.acting_team(options, user, MANAGE)
        try:
            registry_login(
                team=team,
                user=user,
                host=options["host"],
                username=options["username"],
                password=password,
                insecure=options["insecure"],
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write("Login Succeeded")
