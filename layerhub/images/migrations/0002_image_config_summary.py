"""Image.config keeps a bounded summary of the image config instead of the whole document
(the config itself is in the blob store under config_digest)."""

from __future__ import annotations

from typing import Any

from django.db import migrations, models

from layerhub.engine.errors import InvalidManifest
from layerhub.engine.manifest import config_summary


def summarize(apps: Any, schema_editor: Any) -> None:
    Image = apps.get_model("images", "Image")
    for image in Image.objects.only("pk", "config").iterator(chunk_size=100):
        doc = image.config if isinstance(image.config, dict) else {}
        try:
            summary = config_summary(doc)
        except InvalidManifest:  # run settings past the cap: keep what pages can show
            summary = config_summary({**doc, "config": {}})
        Image.objects.filter(pk=image.pk).update(config=summary)


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0001_initial"),
    ]

    operations = [
        migrations.AlterField(
            model_name="image",
            name="config",
            field=models.JSONField(help_text="summary of the image config; the config is a blob"),
        ),
        migrations.RunPython(summarize, migrations.RunPython.noop),
    ]
