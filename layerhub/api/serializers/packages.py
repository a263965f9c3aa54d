"""Installed packages of images, as the API shows them."""

from __future__ import annotations

from rest_framework import serializers

from layerhub.images.models import Package


class PackageSerializer(serializers.ModelSerializer[Package]):
    """A package installed in an image: read from the image's files, never run."""

    image = serializers.IntegerField(source="image_id", read_only=True)

    class Meta:
        model = Package
        fields = ["id", "image", "ecosystem", "name", "version", "arch", "origin", "source_path"]
        read_only_fields = fields
