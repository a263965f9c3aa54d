"""Reads the API needs beyond the catalog's own selectors, each bounded in queries: how widely
a layer is shared (told without naming images the user may not see), and the totals of the
images a user sees.

What sharing must not leak: byte figures count every image (they must be true), names and
counts of images are the user's own; beyond them a layer says only "and others".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from layerhub.core.permissions import VIEW, restrict
from layerhub.images.listing import _shared_layers
from layerhub.images.models import Image, ImageLayer


@dataclass(frozen=True)
class Sharing:
    """How many images use a layer: all of them (``total``), and those the user sees."""

    total: int
    yours: int

    @property
    def others(self) -> bool:
        """Whether images the user does not see use it too."""
        return self.total > self.yours

    @property
    def text(self) -> str:
        """``used by 3 of your images and others``."""
        text = f"used by {self.yours} of your images"
        return text + " and others" if self.others else text


def layer_sharing(layer_ids: Iterable[int], user: Any) -> dict[int, Sharing]:
    """For each layer, how many images use it and how many of those ``user`` sees (two
    GROUP BY queries whatever the number of images)."""
    ids = list(layer_ids)
    rows = ImageLayer.objects.filter(layer_id__in=ids).order_by()
    # an image holds a ChainID at one position only: counting rows counts images
    total = dict(rows.values("layer").annotate(n=Count("pk")).values_list("layer", "n"))
    visible = restrict(Image.objects.all(), user, VIEW)
    yours = dict(
        rows.filter(image__in=visible)
        .values("layer")
        .annotate(n=Count("pk"))
        .values_list("layer", "n")
    )
    return {pk: Sharing(total.get(pk, 0), yours.get(pk, 0)) for pk in ids}


@dataclass(frozen=True)
class ImagesTotals:
    """The images a user sees, as ``store_totals`` counts the store: their logical total
    (every image as if stored alone: layer blobs and snapshots, manifests, configs, indexes)
    and how much of their unpacked bytes is in layers other images use too."""

    images: int
    logical_bytes: int
    size_bytes: int  # unpacked: the sum of the images' SIZE
    shared_bytes: int  # the sum of their SHARED SIZE (shared with any image)
    unique_bytes: int  # the sum of their UNIQUE SIZE


def images_totals(images: QuerySet[Image]) -> ImagesTotals:
    """Totals of ``images`` in four aggregate queries; for the whole catalog ``logical_bytes``
    is ``store_totals().logical_bytes``."""
    rows = ImageLayer.objects.filter(image__in=images.values("pk")).order_by()
    unpacked = Coalesce(Sum(Coalesce("layer__unpacked_size", Value(0))), Value(0))
    layers = rows.aggregate(snapshots=unpacked, blobs=Coalesce(Sum("layer__size"), Value(0)))
    shared = rows.filter(layer__in=_shared_layers()).aggregate(total=unpacked)["total"]
    own = images.order_by().aggregate(
        n=Count("pk"), total=Coalesce(Sum("own_blob_bytes"), Value(0))
    )
    size = int(layers["snapshots"])
    return ImagesTotals(
        images=int(own["n"]),
        logical_bytes=size + int(layers["blobs"]) + int(own["total"]),
        size_bytes=size,
        shared_bytes=int(shared),
        unique_bytes=size - int(shared),
    )
