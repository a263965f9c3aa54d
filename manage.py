#!/usr/bin/env python3
"""Django's command-line utility for layerhub."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a Django management command with layerhub's settings.

    Bad settings (a typo in DEBUG, a DATABASE_URL of the wrong kind) end the command with
    one line naming the variable, not a traceback through Django's internals.
    """
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - loading the settings is what checks them
    except ImproperlyConfigured as exc:
        sys.exit(f"layerhub: bad settings: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
