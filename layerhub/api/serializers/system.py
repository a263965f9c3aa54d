"""``system/df``: disk use as ``docker system df -v`` tells it."""

from __future__ import annotations

from rest_framework import serializers

from layerhub.api.serializers.images import ImageSerializer


class ImagesTotalsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The images you see: their logical total (each as if stored alone) and how much of
    their unpacked bytes is in layers other images use too."""

    images = serializers.IntegerField()
    logical_bytes = serializers.IntegerField()
    size_bytes = serializers.IntegerField(help_text="the sum of their SIZE")
    shared_bytes = serializers.IntegerField(help_text="the sum of their SHARED SIZE")
    unique_bytes = serializers.IntegerField(help_text="the sum of their UNIQUE SIZE")


class StoreTotalsSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The whole store (staff): what every image would take alone against what it holds."""

    images = serializers.IntegerField()
    layers = serializers.IntegerField(help_text="snapshots")
    blobs = serializers.IntegerField()
    logical_bytes = serializers.IntegerField()
    physical_bytes = serializers.IntegerField()
    physical_blob_bytes = serializers.IntegerField()
    physical_snapshot_bytes = serializers.IntegerField(
        help_text="a file dedup hardlinked into several snapshots counted once"
    )
    dedup_bytes = serializers.IntegerField(
        help_text="what dedup's hardlinks save (part of savings_bytes)"
    )
    savings_bytes = serializers.IntegerField()
    savings_percent = serializers.FloatField()


class DfSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """Totals, then a page of images with SIZE, SHARED SIZE and UNIQUE SIZE."""

    totals = ImagesTotalsSerializer()
    store = StoreTotalsSerializer(allow_null=True, help_text="staff only; null for others")
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ImageSerializer(many=True)
