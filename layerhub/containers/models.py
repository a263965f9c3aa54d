"""Containers: one writable layer over an image, as ``docker create`` makes."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from layerhub.hosts.models import current_host


class Container(models.Model):
    """A writable layer (``containers/<container_id>/upper`` in its host's store) over an image.

    Creating one copies nothing: the image's snapshots are its lower layers, read-only.
    """

    class State(models.TextChoices):
        CREATED = "created", "created"
        RUNNING = "running", "running"
        EXITED = "exited", "exited"

    container_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=128, unique=True)
    image = models.ForeignKey("images.Image", on_delete=models.PROTECT, related_name="containers")
    team = models.ForeignKey("accounts.Team", on_delete=models.PROTECT, related_name="containers")
    state = models.CharField(max_length=16, choices=State.choices, default=State.CREATED)
    last_exit_code = models.IntegerField(null=True, blank=True)
    last_command = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(default=timezone.now)
    # the host whose disk holds its writable layer (LAYERHUB_HOST of the worker that made it):
    # its exec, files, diff, commit and removal run there
    host = models.CharField(max_length=100, default=current_host)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.name

    @property
    def short_id(self) -> str:
        """The 12 characters ``docker ps`` shows."""
        return self.container_id[:12]
