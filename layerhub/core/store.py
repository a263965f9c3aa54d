"""The process's handle on the layer store named by settings.LAYERHUB_STORE."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.conf import settings

from layerhub.engine.blobstore import BlobsLocation
from layerhub.engine.store import Store, StoreReserve


@cache
def _store_at(
    root: Path, reserve: StoreReserve, blobs: BlobsLocation, snapshots: Path | None
) -> Store:
    return Store(root, reserve=reserve, blobs=blobs, snapshots=snapshots)


def get_store() -> Store:
    """The Store at settings.LAYERHUB_STORE, created once per process and path, keeping
    settings.LAYERHUB_STORE_RESERVE free, its blobs where settings.LAYERHUB_BLOBS says, with
    this host's snapshots at settings.LAYERHUB_SNAPSHOTS (when set).

    Keyed by the settings rather than cached outright, so a test that points LAYERHUB_STORE
    elsewhere gets a store there instead of the one an earlier test opened. Opening a store of
    an older layout migrates it (see ``layerhub.engine.store.migrate_store``).
    """
    return _store_at(
        Path(settings.LAYERHUB_STORE),
        settings.LAYERHUB_STORE_RESERVE,
        settings.LAYERHUB_BLOBS,
        settings.LAYERHUB_SNAPSHOTS,
    )
