"""App configuration for layerhub.dashboard."""

from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    """Server-rendered pages: thin views over services and selectors."""

    name = "layerhub.dashboard"
    label = "dashboard"
    verbose_name = "layerhub dashboard"
