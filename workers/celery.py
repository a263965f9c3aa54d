"""The Celery app, configured from Django settings (every ``CELERY_*`` setting)."""

from __future__ import annotations

import os
import sys

from celery import Celery
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")

try:
    # Checked here, where `celery -A workers worker` first loads them: one line naming the
    # bad variable instead of a traceback from deep inside Celery's Django fixup.
    settings.INSTALLED_APPS  # noqa: B018
except ImproperlyConfigured as exc:
    sys.exit(f"layerhub: bad settings: {exc}")

# Listing workers.tasks here makes importing the app enough to register its tasks.
app = Celery("layerhub", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
# Picks up a tasks.py in any installed Django app.
app.autodiscover_tasks()
