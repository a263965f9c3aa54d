"""``python manage.py login HOST -u USER``: store a registry login, like ``docker login``;
``login --list``: the registries layerhub knows, their logins, TLS state and mirrors."""

from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import MANAGE, VIEW, is_staff
from layerhub.engine.errors import LayerhubError
from layerhub.images.selectors import registry_access_list
from layerhub.images.services import registry_login
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Check and store a login for a registry (the password is kept encrypted)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("host", nargs="?", help="registry host[:port], e.g. ghcr.io")
        parser.add_argument("-u", "--username")
        parser.add_argument(
            "--password-stdin", action="store_true", help="read the password from stdin"
        )
        parser.add_argument(
            "--insecure",
            action="store_true",
            help="allow plain HTTP, or TLS with a certificate that fails verification",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="list the registries with their logins, TLS state and mirrors",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            self._list(self._listed_team(options))
            return
        if not options["host"] or not options["username"]:
            raise CommandError("give a registry and -u USERNAME (or --list)")
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

    def _listed_team(self, options: dict[str, Any]) -> Any:
        """Whose logins ``--list`` shows: the team of ``--team``, or of a ``--user`` who is
        not staff (a team sees its own logins alone); every team's for the operator."""
        user = self.acting_user(options)
        if options.get("team") or not (user is None or is_staff(user)):
            return self.acting_team(options, user, VIEW)
        return None

    def _list(self, team: Any) -> None:
        rows = [
            (
                row.registry,
                row.username or "-",
                row.tls.summary,
                ",".join(row.tls.mirrors) or "-",
            )
            for row in registry_access_list(team)
        ]
        if not rows:
            self.stdout.write("No registry logins, mirrors or certificates configured.")
            return
        header = ("REGISTRY", "USERNAME", "TLS", "MIRRORS")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("   ".join([*cells, row[3]]).rstrip())
