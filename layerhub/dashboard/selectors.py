"""Reads behind the overview: the catalog's most shared layers and the images with the most
bytes of their own, each in a bounded number of aggregate queries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet, Sum

from layerhub.images.listing import display_name, images_named
from layerhub.images.models import Image, ImageLayer, Layer, Repository
from layerhub.images.sizes import images_with_sizes


@dataclass(frozen=True)
class SharedLayer:
    """A layer and the images that use it: stored once, it saves its size for every other."""

    layer: Layer
    users: int

    @property
    def chain_hex(self) -> str:
        """The ChainID's hex, as the layer page's address takes it."""
        return self.layer.chain_id.removeprefix("sha256:")

    @property
    def size(self) -> int:
        """Its unpacked size (Docker's layer size); 0 while it is not unpacked."""
        return self.layer.unpacked_size or 0

    @property
    def saved_bytes(self) -> int:
        """What storing it once saves over each image storing its own: size * (users - 1)."""
        return self.size * (self.users - 1)


def _whole_catalog(images: QuerySet[Image]) -> bool:
    """Whether ``images`` is every image (what ``restrict`` gives a user who sees all)."""
    return images.model is Image and not images.query.where and not images.query.is_sliced


def _rows_of(images: QuerySet[Image]) -> QuerySet[ImageLayer]:
    """The image-layer rows of ``images``: all of them, with no ``IN (SELECT ...)`` to pay
    for, when ``images`` is the whole catalog."""
    rows = ImageLayer.objects.all()
    return rows if _whole_catalog(images) else rows.filter(image__in=images)


def most_shared_layers(images: QuerySet[Image], limit: int = 8) -> list[SharedLayer]:
    """The ``limit`` layers that the most of ``images`` use (two at least), the oldest first
    among equals. Over the whole catalog, the layers' recorded image counts; over fewer
    images, a GROUP BY over their image-layer rows, then those layers by pk."""
    if _whole_catalog(images):
        shared = Layer.objects.filter(image_count__gt=1).order_by("-image_count", "pk")[:limit]
        return [SharedLayer(layer, layer.image_count) for layer in shared]
    # an image holds a ChainID at one position only, so counting rows counts images
    counts = list(
        _rows_of(images)
        .values("layer")
        .annotate(users=Count("image"))
        .filter(users__gt=1)
        .order_by("-users", "layer")[:limit]
    )
    layers = Layer.objects.in_bulk([row["layer"] for row in counts])
    return [SharedLayer(layers[row["layer"]], row["users"]) for row in counts]


@dataclass(frozen=True)
class NamedImage:
    """An image with its sizes (``images_with_sizes``) and the name people know it by."""

    image: Any
    name: str


def images_with_most_unique_bytes(
    images: QuerySet[Image], limit: int = 8, repositories: QuerySet[Repository] | None = None
) -> list[NamedImage]:
    """The ``limit`` images of ``images`` holding the most bytes no other image of the
    catalog uses (UNIQUE SIZE), the newest first among equals, with their sizes and names
    (from ``repositories``: those the user sees; None: every one).

    The layers one image alone uses are those whose recorded image count is 1: their sizes
    are summed per image in one GROUP BY over those layers' rows, and only the top images get
    their full sizes (``images_with_sizes``, whose UNIQUE SIZE is the same sum)."""
    top = list(
        _rows_of(images)
        .filter(layer__image_count=1)
        .values("image")
        .annotate(unique=Sum("layer__unpacked_size"))
        .filter(unique__gt=0)
        .order_by("-unique", "-image")[:limit]
        .values_list("image", flat=True)
    )
    found = {
        image.pk: image
        for image in images_named(images_with_sizes(images.filter(pk__in=top)), repositories)
    }
    return [NamedImage(found[pk], display_name(found[pk])) for pk in top if pk in found]
