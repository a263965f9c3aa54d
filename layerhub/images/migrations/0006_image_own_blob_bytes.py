"""Each image records the bytes of its own manifest, config and index blobs (from their Blob
rows), so the logical total is one sum over images."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.db.models import IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce


def backfill(apps: Any, schema_editor: Any) -> None:
    Image = apps.get_model("images", "Image")
    Blob = apps.get_model("images", "Blob")

    def size(field: str) -> Coalesce:
        return Coalesce(
            Subquery(
                Blob.objects.filter(digest=OuterRef(field)).values("size")[:1],
                output_field=IntegerField(),
            ),
            Value(0),
        )

    Image.objects.update(
        own_blob_bytes=size("manifest_digest") + size("config_digest") + size("index_digest")
    )


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0005_image_added_order"),
    ]

    operations = [
        migrations.AddField(
            model_name="image",
            name="own_blob_bytes",
            field=models.BigIntegerField(default=0),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
