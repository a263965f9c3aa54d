"""What every layerhub management command shares: errors as one line, never a traceback.

An error a user caused (a LayerhubError) is its message. Anything else is a bug or a fault of
the host (an OSError from the disk, an unmount that failed): it is shown as such, in one
line, with the way to see the traceback (``--traceback``, Django's own option). Ctrl-C ends
the command quietly; a job it was following goes on in the worker.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError, CommandParser

from layerhub.engine.errors import LayerhubError
from layerhub.jobs.services import one_line


class LayerhubCommand(BaseCommand):
    """A management command whose failures are one line each.

    It skips Django's system checks, which import every URL module and view (half a second
    of a warm ``pull``'s wall time) and check nothing a command here depends on;
    ``manage.py check`` and the web server still run them.
    """

    requires_system_checks: list[str] = []
    # commands that act for a user and a team take --user and --team
    acts_for_team = False

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        if self.acts_for_team:
            parser.add_argument("--user", help="act as this user (default: the first superuser)")
            parser.add_argument("--team", help="act for this team (default: the user's only team)")
        return parser

    def acting_user(self, options: dict[str, Any]) -> Any:
        """The user named by ``--user`` (CommandError if there is none), else the first
        superuser, else None: no superuser yet, the operator acts with every right."""
        from django.contrib.auth import get_user_model

        users = get_user_model()
        name = options.get("user")
        if name:
            user = users.objects.filter(**{users.USERNAME_FIELD: name}, is_active=True).first()
            if user is None:
                raise CommandError(f"no such user: {name}")
            return user
        # None: a database with no superuser yet, where the machine's operator acts with
        # every right (as ``make dev`` and ``manage.py`` on the server itself do)
        return users.objects.filter(is_superuser=True, is_active=True).order_by("pk").first()

    def acting_team(self, options: dict[str, Any], user: Any, action: str) -> Any:
        """The team named by ``--team``, or the user's only team that may ``action``."""
        from django.core.exceptions import PermissionDenied

        from layerhub.accounts.models import Team
        from layerhub.core.permissions import team_choose

        name = options.get("team")
        if user is None:
            teams = list(Team.objects.filter(name=name) if name else Team.objects.all()[:21])
            if not teams and not name:
                # the migrations make it; a database emptied since gets it back
                teams = [Team.objects.get_or_create(name="default")[0]]
            if len(teams) == 1:
                return teams[0]
            if name or not teams:
                raise CommandError(f"no such team: {name}" if name else "there is no team")
            listed = ", ".join(team.name for team in teams[:20])
            raise CommandError(f"choose a team with --team: {listed}")
        try:
            return team_choose(user, name, action)
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None

    def execute(self, *args: Any, **options: Any) -> str | None:
        try:
            return super().execute(*args, **options)
        except (CommandError, SystemExit):
            raise
        except KeyboardInterrupt:
            self.stderr.write("interrupted (a job already queued goes on in the worker)")
            sys.exit(130)
        except LayerhubError as exc:
            raise CommandError(one_line(str(exc))) from None
        except PermissionDenied as exc:
            raise CommandError(one_line(str(exc) or "permission denied")) from None
        except Exception as exc:
            if options.get("traceback"):
                raise
            raise CommandError(
                one_line(
                    f"internal error (not caused by your input): {type(exc).__name__}: {exc}; "
                    "run the command again with --traceback to see where"
                )
            ) from None

    def table(self, rows: Sequence[Sequence[str]]) -> None:
        """Print ``rows`` (the header first) in columns, as ``docker`` prints its tables."""
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            self.stdout.write(
                "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
