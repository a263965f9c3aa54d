"""Sizes that add up, read from the database: per image (SIZE, SHARED SIZE, UNIQUE SIZE as
``docker system df -v`` defines them), for the whole store (logical vs physical, savings), and
what deleting an image frees.

Definitions (bytes):
- a layer's size is its snapshot's: the sum of ``st_size`` of its regular files, a hardlinked
  file once (``Layer.unpacked_size``, recorded when the snapshot was made);
- an image's SIZE is the sum of its layers' sizes; SHARED SIZE the part in layers (by ChainID)
  that at least one other image also uses; UNIQUE SIZE the rest. SIZE = SHARED + UNIQUE;
- its download size is the sum of its layer blobs' compressed sizes (from the manifest);
- the store's logical total counts every image as if stored alone (its blobs and snapshots);
  its physical total is what ``blobs/`` and ``snapshots/`` hold, each once.

Every figure is one aggregate query (or a few), whatever the number of images: pages call these,
never loop over rows in Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import (
    Count,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
)
from django.db.models.functions import Coalesce

from layerhub.images.models import Image, ImageLayer, Layer


def _layer_users() -> Subquery:
    """How many images use the layer of the outer ImageLayer row."""
    return Subquery(
        ImageLayer.objects.filter(layer=OuterRef("layer"))
        .values("layer")
        .annotate(n=Count("image", distinct=True))
        .values("n"),
        output_field=IntegerField(),
    )


def _sum_over_layers(*, shared: bool | None) -> Subquery:
    rows = ImageLayer.objects.filter(image=OuterRef("pk"))
    if shared is not None:
        rows = rows.annotate(users=_layer_users())
        rows = rows.filter(users__gt=1) if shared else rows.filter(users__lte=1)
    return Subquery(
        rows.values("image")
        .annotate(total=Sum(Coalesce("layer__unpacked_size", Value(0))))
        .values("total"),
        output_field=IntegerField(),
    )


def images_with_sizes(queryset: QuerySet[Image] | None = None) -> QuerySet[Image]:
    """``queryset`` (default: every image) annotated, without a JOIN fan-out, with:

    ``size``, ``shared_size``, ``unique_size`` (unpacked bytes; SIZE = SHARED + UNIQUE),
    ``download_size`` (compressed layer blobs), ``layer_count`` and ``pending_layers`` (layers
    whose snapshot is not recorded yet: their bytes are not in SIZE until they are).
    """
    queryset = Image.objects.all() if queryset is None else queryset
    per_image = ImageLayer.objects.filter(image=OuterRef("pk")).values("image")
    return queryset.annotate(
        size=Coalesce(_sum_over_layers(shared=None), Value(0)),
        shared_size=Coalesce(_sum_over_layers(shared=True), Value(0)),
        unique_size=Coalesce(_sum_over_layers(shared=False), Value(0)),
        download_size=Coalesce(
            Subquery(
                per_image.annotate(total=Sum("layer__size")).values("total"),
                output_field=IntegerField(),
            ),
            Value(0),
        ),
        layer_count=Coalesce(
            Subquery(per_image.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
            Value(0),
        ),
        pending_layers=Coalesce(
            Subquery(
                per_image.annotate(n=Count("pk", filter=Q(layer__unpacked_at__isnull=True))).values(
                    "n"
                ),
                output_field=IntegerField(),
            ),
            Value(0),
        ),
    )


@dataclass(frozen=True)
class StoreTotals:
    """The whole store, from the database: what images would take stored alone (logical)
    against what the store holds (physical)."""

    images: int
    layers: int  # distinct ChainIDs with a snapshot recorded
    blobs: int
    logical_bytes: int
    physical_blob_bytes: int
    physical_snapshot_bytes: int

    @property
    def physical_bytes(self) -> int:
        """What ``blobs/`` and ``snapshots/`` hold."""
        return self.physical_blob_bytes + self.physical_snapshot_bytes

    @property
    def savings_bytes(self) -> int:
        """What sharing saves: logical minus physical (never negative)."""
        return max(self.logical_bytes - self.physical_bytes, 0)

    @property
    def savings_percent(self) -> float:
        """Savings as a share of the logical total, 0 for an empty store."""
        return 100.0 * self.savings_bytes / self.logical_bytes if self.logical_bytes else 0.0


def store_totals() -> StoreTotals:
    """Logical and physical totals of the store, in a few aggregate queries."""
    logical_layers = ImageLayer.objects.aggregate(
        snapshots=Coalesce(Sum("layer__unpacked_size"), Value(0)),
        blobs=Coalesce(Sum("layer__size"), Value(0)),
    )
    physical_snapshots = Layer.objects.filter(unpacked_at__isnull=False).aggregate(
        n=Count("pk"), total=Coalesce(Sum("unpacked_size"), Value(0))
    )
    # a blob shared by two ChainIDs (the same compressed layer over different bases) is one file
    blob_rows = Layer.objects.values("digest").annotate(size=Sum("size") / Count("pk"))
    blob_bytes = sum(row["size"] or 0 for row in blob_rows)
    return StoreTotals(
        images=Image.objects.count(),
        layers=physical_snapshots["n"],
        blobs=len(blob_rows),
        logical_bytes=logical_layers["snapshots"] + logical_layers["blobs"],
        physical_blob_bytes=int(blob_bytes),
        physical_snapshot_bytes=physical_snapshots["total"],
    )


@dataclass(frozen=True)
class DeletePlan:
    """What deleting an image removes at once, and the exact bytes that frees.

    A blob or snapshot still used by another image, a container or a running job's lease is
    kept; ``held`` lists what only a lease keeps (garbage collection frees it later).
    """

    blobs: list[tuple[str, int]] = field(default_factory=list)  # (digest, bytes)
    snapshots: list[tuple[str, int]] = field(default_factory=list)  # (ChainID, bytes)
    held: list[str] = field(default_factory=list)

    @property
    def frees_bytes(self) -> int:
        """The bytes the delete frees, to the byte."""
        return sum(size for _, size in self.blobs) + sum(size for _, size in self.snapshots)
