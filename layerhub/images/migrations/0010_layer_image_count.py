"""Each layer records how many images use it (its image-layer rows), counted here once from
the rows; from then on the code that adds and deletes those rows keeps it."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.db.models import Count, IntegerField, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce


def backfill(apps: Any, schema_editor: Any) -> None:
    Layer = apps.get_model("images", "Layer")
    ImageLayer = apps.get_model("images", "ImageLayer")
    rows = (
        ImageLayer.objects.filter(layer=OuterRef("pk"))
        .order_by()
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n")
    )
    Layer.objects.update(
        image_count=Coalesce(Subquery(rows, output_field=IntegerField()), Value(0))
    )


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0009_teams_default"),
    ]

    operations = [
        migrations.AddField(
            model_name="layer",
            name="image_count",
            field=models.IntegerField(default=0, help_text="images using this layer"),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
        migrations.AddIndex(
            model_name="layer",
            index=models.Index(fields=["image_count"], name="layer_image_count"),
        ),
    ]
