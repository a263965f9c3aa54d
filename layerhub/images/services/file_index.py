"""Recording layers' file indexes: from the unpack that made a snapshot (pull, unpack job,
commit), or, for a snapshot made before indexing, from a walk of it (the index job and
``manage.py index_files``).

A layer's index is recorded once: a snapshot another image already had keeps the index it
has, and two jobs that made the same layer at once record it once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from layerhub.core.store import get_store
from layerhub.engine.errors import LayerhubError
from layerhub.engine.file_index import FileRecord, walk_snapshot
from layerhub.engine.pipeline import UnpackedLayer
from layerhub.images.file_index import layer_files_record
from layerhub.images.models import Image, Layer, LayerFiles
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_run, job_start

log = logging.getLogger(__name__)


def layer_index_record(*, layer: Layer, records: Iterable[FileRecord]) -> bool:
    """Record ``layer``'s file index from the unpack that made its snapshot; False (nothing
    written) if the layer has an index already, or is gone."""
    try:
        with transaction.atomic():
            # the layer's row lock orders two recorders of one layer (PostgreSQL)
            if not Layer.objects.select_for_update().filter(pk=layer.pk).exists():
                return False
            if LayerFiles.objects.filter(layer_id=layer.pk).exists():
                return False
            layer_files_record(layer, records)
    except IntegrityError:
        # SQLite takes no row lock: the other recorder's LayerFiles row came first
        if LayerFiles.objects.filter(layer_id=layer.pk).exists():
            return False
        raise
    return True


def layers_index_record(unpacked: Sequence[UnpackedLayer]) -> int:
    """Record the index of each layer an unpack made (``files`` set); how many it recorded."""
    made = {layer.chain_id: layer.files for layer in unpacked if layer.files is not None}
    recorded = 0
    for row in Layer.objects.filter(chain_id__in=made):
        files = made[row.chain_id]
        assert files is not None
        recorded += layer_index_record(layer=row, records=files)
    return recorded


@dataclass
class IndexReport:
    """What an index run did."""

    indexed: list[tuple[str, int]] = field(default_factory=list)  # (chain ID, entries)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (chain ID, why)

    def to_json(self) -> dict[str, Any]:
        return {"indexed": self.indexed, "skipped": self.skipped}


def layer_index_from_snapshot(*, layer: Layer, reindex: bool = False) -> int | None:
    """Walk ``layer``'s snapshot and record its index (a snapshot made before indexing); the
    entry count, or None if it has an index already (and not ``reindex``). Raises
    LayerhubError when the snapshot is not in the store."""
    if not reindex and LayerFiles.objects.filter(layer_id=layer.pk).exists():
        return None
    store = get_store()
    tree = store.snapshots.path(layer.chain_id)
    if not tree.is_dir():
        raise LayerhubError(f"layer {layer.chain_id} has no snapshot in the store")
    try:
        records = list(walk_snapshot(tree, store.whiteouts))
    except FileNotFoundError:  # removed while walked (rmi, garbage collection)
        raise LayerhubError(f"layer {layer.chain_id}'s snapshot was removed meanwhile") from None
    with transaction.atomic():
        if not Layer.objects.select_for_update().filter(pk=layer.pk).exists():
            raise LayerhubError(f"layer {layer.chain_id} was deleted")
        layer_files_record(layer, records)
    return len(records)


def layers_to_index(*, images: Sequence[Image] | None = None, reindex: bool = False) -> list[Layer]:
    """The unpacked layers of ``images`` (every unpacked layer when None) that have no index
    (with ``reindex``: all of them), bottom-most first."""
    layers = Layer.objects.filter(unpacked_at__isnull=False)
    if images is not None:
        layers = layers.filter(image_layers__image__in=list(images)).distinct()
    if not reindex:
        layers = layers.exclude(pk__in=LayerFiles.objects.values("layer_id"))
    return list(layers.order_by("pk"))


def layers_index(
    layers: Sequence[Layer],
    *,
    reindex: bool = False,
    on_layer: Callable[[Layer, int | None, str | None], None] | None = None,
) -> IndexReport:
    """Index each layer from its snapshot; one that cannot be (its snapshot gone) is skipped
    with the reason. ``on_layer(layer, entries, why_skipped)`` is called after each."""
    report = IndexReport()
    for layer in layers:
        try:
            count = layer_index_from_snapshot(layer=layer, reindex=reindex)
        except (LayerhubError, OSError) as exc:
            report.skipped.append((layer.chain_id, str(exc)))
            if on_layer is not None:
                on_layer(layer, None, str(exc))
            continue
        if count is not None:
            report.indexed.append((layer.chain_id, count))
        if on_layer is not None:
            on_layer(layer, count, None)
    return report


def index_files_start(*, user: Any = None, images: Sequence[Image] | None = None) -> Job:
    """Queue an index job: the snapshots of ``images`` (every snapshot when None) that have
    no file index yet."""
    params = {} if images is None else {"images": [image.pk for image in images]}
    return job_start(
        kind=Job.Kind.INDEX,
        user=user,
        reference="store" if images is None else ", ".join(i.image_id[:12] for i in images),
        params=params,
    )


def index_files_run(*, job_id: int) -> None:
    """The index job: walk each snapshot without an index and record it; what could not be
    indexed is listed in ``job.params["report"]`` and fails the job."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return

    def work() -> None:
        wanted = job.params.get("images")
        images = None if wanted is None else list(Image.objects.filter(pk__in=wanted))
        report = layers_index(layers_to_index(images=images))
        job.params = {**job.params, "report": report.to_json()}
        job.save(update_fields=["params"])
        if report.skipped:
            why = report.skipped[0][1]
            more = len(report.skipped) - 1
            raise LayerhubError(
                f"{len(report.skipped)} layers not indexed: {why}"
                + (f" (and {more} more)" if more else "")
            )
        log.info("indexed %d layers", len(report.indexed))

    job_run(job, work)
