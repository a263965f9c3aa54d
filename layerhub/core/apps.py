"""App configuration for layerhub.core."""

from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared pieces: the store accessor, size formatting, health checks."""

    name = "layerhub.core"
    label = "core"
    verbose_name = "layerhub core"
