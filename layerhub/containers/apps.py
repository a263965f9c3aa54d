"""App configuration for layerhub.containers."""

from __future__ import annotations

from django.apps import AppConfig


class ContainersConfig(AppConfig):
    """Containers: writable layers over images."""

    name = "layerhub.containers"
    label = "containers"
