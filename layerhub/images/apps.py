"""App configuration for layerhub.images."""

from __future__ import annotations

from django.apps import AppConfig


class ImagesConfig(AppConfig):
    """The image catalog: repositories, tags, images, layers and registry logins."""

    name = "layerhub.images"
    label = "images"
