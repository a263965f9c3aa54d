"""Each layer's recorded count of the images that use it (``Layer.image_count``), kept exact
by the code that adds and deletes image-layer rows.

Adding and releasing change the count by one in the same transaction as the rows
(``image_count = image_count + 1`` is re-read under the row's lock, so two pulls on one base
both count); a recount from the rows is for migrations, bulk loads and repairs, when nothing
else writes.

An image holds a ChainID at one position only (a ChainID names its whole stack below), so
its rows count images.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.db.models import Count, F, IntegerField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from layerhub.images.models import Image, ImageLayer, Layer


def image_layers_add(*, image: Image, layers: Sequence[Layer]) -> list[ImageLayer]:
    """Record ``layers`` (bottom first) as ``image``'s stack and count the image on each.
    Call it inside the transaction that records the image."""
    pks = [layer.pk for layer in layers]
    if len(set(pks)) != len(pks):
        raise ValueError(f"image {image.pk} would hold a layer at two positions")
    rows = ImageLayer.objects.bulk_create(
        [
            ImageLayer(image=image, layer=layer, position=position)
            for position, layer in enumerate(layers)
        ]
    )
    Layer.objects.filter(pk__in=pks).update(image_count=F("image_count") + 1)
    return rows


def image_layers_release(*, image: Image) -> None:
    """Uncount ``image`` on each of its layers, just before it is deleted (its rows go with
    it), in the delete's transaction."""
    Layer.objects.filter(pk__in=image.image_layers.values("layer_id")).update(
        image_count=F("image_count") - 1
    )


def _rows_counted() -> Coalesce:
    """The outer layer's image-layer rows, counted."""
    return Coalesce(
        Subquery(
            ImageLayer.objects.filter(layer=OuterRef("pk"))
            .order_by()
            .values("layer")
            .annotate(n=Count("pk"))
            .values("n"),
            output_field=IntegerField(),
        ),
        Value(0),
    )


def layer_image_counts_refresh(layers: QuerySet[Layer] | None = None) -> int:
    """Recount the images of ``layers`` (default: every layer) from their rows; the number of
    layers updated. Not for use beside running writers: a recount does not see rows another
    transaction has not committed yet."""
    layers = Layer.objects.all() if layers is None else layers
    return layers.update(image_count=_rows_counted())


def layer_image_count_mismatches() -> list[tuple[str, int, int]]:
    """Every layer whose recorded count is not its rows' count: (ChainID, recorded, rows),
    in one query."""
    return list(
        Layer.objects.annotate(rows=_rows_counted())
        .exclude(image_count=F("rows"))
        .order_by("chain_id")
        .values_list("chain_id", "image_count", "rows")
    )
