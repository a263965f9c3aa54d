"""Blob rows for the images recorded before blobs had rows: each manifest, config, index and
layer blob the store holds, with its length read from the file."""

from __future__ import annotations

import os
from typing import Any

from django.db import migrations


def backfill(apps: Any, schema_editor: Any) -> None:
    Image = apps.get_model("images", "Image")
    Layer = apps.get_model("images", "Layer")
    Blob = apps.get_model("images", "Blob")
    if not Image.objects.exists() and not Layer.objects.exists():
        return  # nothing recorded: leave the store unopened
    from layerhub.core.store import get_store
    from layerhub.engine.errors import BlobNotFound

    store = get_store()
    wanted: dict[str, str] = {}
    for manifest, config, index in Image.objects.values_list(
        "manifest_digest", "config_digest", "index_digest"
    ).iterator(chunk_size=500):
        wanted.setdefault(manifest, "manifest")
        wanted.setdefault(config, "config")
        if index:
            wanted.setdefault(index, "index")
    for digest in Layer.objects.values_list("digest", flat=True).distinct().iterator(chunk_size=500):
        wanted.setdefault(digest, "layer")
    rows = []
    for digest, kind in wanted.items():
        try:
            size = store.blobs.size(digest)
        except BlobNotFound:
            continue  # not in the store: no row (store_verify reports the image)
        rows.append(Blob(digest=digest, size=size, kind=kind))
    Blob.objects.bulk_create(rows, batch_size=500, ignore_conflicts=True)


class Migration(migrations.Migration):
    dependencies = [
        ("images", "0003_blob"),
    ]

    operations = [migrations.RunPython(backfill, migrations.RunPython.noop)]
