#!/usr/bin/env python3
"""Django's command-line utility for layerhub."""

from __future__ import annotations

import gc
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from django.core.management.base import BaseCommand


def main() -> None:
    """Run a Django management command with layerhub's settings.

    Bad settings (a typo in DEBUG, a DATABASE_URL of the wrong kind) end the command with
    one line naming the variable, not a traceback through Django's internals.

    Start-up (settings, apps, models, the Celery app, the command's module) makes some
    60,000 objects that live as long as the process and hardly any garbage, yet the cyclic
    collector walks them again and again while they are made, and once more at exit: a
    third of a warm ``pull``'s CPU time. So nothing is collected until the command is found;
    then what start-up made is frozen (``gc.freeze``: no later collection walks it, the one
    at exit included) and collection goes on as usual for the command itself.
    """
    gc.disable()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import ManagementUtility

    class Utility(ManagementUtility):
        def fetch_command(self, subcommand: str) -> BaseCommand:
            command = super().fetch_command(subcommand)
            gc.freeze()
            gc.enable()
            return command

    try:
        settings.INSTALLED_APPS  # noqa: B018 - loading the settings is what checks them
    except ImproperlyConfigured as exc:
        sys.exit(f"layerhub: bad settings: {exc}")
    Utility(sys.argv).execute()


if __name__ == "__main__":
    main()
