"""Reads of the catalog: image listings as ``docker images`` shows them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Prefetch

from layerhub.engine.reference import Reference
from layerhub.images.models import Image, ImageLayer, Tag


@dataclass(frozen=True)
class ImageRow:
    """One line of ``docker images``: a repository:tag (or <none>) and its image."""

    repository: str
    tag: str
    image: Image
    image_id: str
    created: datetime | None
    size: int  # uncompressed bytes of every layer (Docker's SIZE), or compressed if not unpacked
    unpacked: bool


def image_size(image: Image) -> tuple[int, bool]:
    """(bytes, unpacked): the sum of the layers' unpacked sizes once all are unpacked, else
    the sum of their compressed sizes."""
    layers = [row.layer for row in image.image_layers.all()]
    if layers and all(layer.unpacked_size is not None for layer in layers):
        return sum(layer.unpacked_size or 0 for layer in layers), True
    return sum(layer.size for layer in layers), False


def _familiar(registry: str, name: str) -> str:
    return Reference(registry, name, None, None).familiar


def image_rows() -> list[ImageRow]:
    """Every tag, then every image no tag points at (``<none>``), newest first."""
    images = Image.objects.prefetch_related(
        Prefetch("image_layers", queryset=ImageLayer.objects.select_related("layer")),
        "repositories",
        Prefetch("tags", queryset=Tag.objects.select_related("repository")),
    )
    rows: list[ImageRow] = []
    for image in images:
        size, unpacked = image_size(image)
        tags = list(image.tags.all())
        names = [(_familiar(t.repository.registry, t.repository.name), t.name) for t in tags]
        if not names:
            repos = list(image.repositories.all())
            names = [(_familiar(r.registry, r.name), "<none>") for r in repos] or [
                ("<none>", "<none>")
            ]
        for repository, tag in names:
            rows.append(
                ImageRow(repository, tag, image, image.image_id, image.created, size, unpacked)
            )
    rows.sort(key=lambda r: (r.image.added_at, r.repository, r.tag), reverse=True)
    return rows
