"""Reads of the catalog: image listings as ``docker images`` shows them."""

from __future__ import annotations

from dataclasses import dataclass, replace
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


def image_display_name(image: Image) -> str:
    """How ``docker ps`` names a container's image: a tag if it has one, else its ID."""
    tag = image.tags.select_related("repository").first()
    if tag is None:
        return image.image_id
    return f"{_familiar(tag.repository.registry, tag.repository.name)}:{tag.name}"


@dataclass(frozen=True)
class HistoryRow:
    """One line of ``docker history``, newest first."""

    image: str  # the image ID on the top line, "<missing>" below, as Docker prints
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    author: str = ""


def image_history(image: Image) -> list[HistoryRow]:
    """The image's history entries matched with its layers (empty_layer entries have none)."""
    layers = [row.layer for row in image.image_layers.select_related("layer").order_by("position")]
    history = [h for h in (image.config.get("history") or []) if isinstance(h, dict)]
    rows: list[HistoryRow] = []
    index = 0
    for entry in history:
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and index < len(layers):
            layer = layers[index]
            size = layer.unpacked_size if layer.unpacked_size is not None else layer.size
            index += 1
        rows.append(
            HistoryRow(
                "<missing>",
                entry.get("created"),
                str(entry.get("created_by", "")),
                size,
                str(entry.get("comment", "")),
                empty,
                str(entry.get("author", "")),
            )
        )
    rows.reverse()
    if rows:
        rows[0] = replace(rows[0], image=image.image_id)
    return rows
