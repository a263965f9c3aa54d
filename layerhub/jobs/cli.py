"""What every layerhub management command shares: errors as one line, never a traceback.

An error a user caused (a LayerhubError) is its message. Anything else is a bug or a fault of
the host (an OSError from the disk, an unmount that failed): it is shown as such, in one
line, with the way to see the traceback (``--traceback``, Django's own option). Ctrl-C ends
the command quietly; a job it was following goes on in the worker.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from layerhub.engine.errors import LayerhubError
from layerhub.jobs.services import one_line


class LayerhubCommand(BaseCommand):
    """A management command whose failures are one line each.

    It skips Django's system checks, which import every URL module and view (half a second
    of a warm ``pull``'s wall time) and check nothing a command here depends on;
    ``manage.py check`` and the web server still run them.
    """

    requires_system_checks: list[str] = []

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
        except Exception as exc:
            if options.get("traceback"):
                raise
            raise CommandError(
                one_line(
                    f"internal error (not caused by your input): {type(exc).__name__}: {exc}; "
                    "run the command again with --traceback to see where"
                )
            ) from None
