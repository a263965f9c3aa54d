"""App configuration for layerhub.hosts."""

from __future__ import annotations

from django.apps import AppConfig


class HostsConfig(AppConfig):
    """The hosts of a fleet: heartbeats, host queues, calls to a container's host."""

    name = "layerhub.hosts"
    label = "hosts"
    verbose_name = "layerhub hosts"
