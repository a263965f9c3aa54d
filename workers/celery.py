"""The Celery app, configured from Django settings (every ``CELERY_*`` setting)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "layerhub.settings")

# Listing workers.tasks here makes importing the app enough to register its tasks.
app = Celery("layerhub", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
# Picks up a tasks.py in any installed Django app.
app.autodiscover_tasks()
