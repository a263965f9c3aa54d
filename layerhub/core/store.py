"""The process's handle on the layer store named by settings.LAYERHUB_STORE."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.conf import settings

from layerhub.engine.store import Store


@cache
def _store_at(root: Path) -> Store:
    return Store(root)


def get_store() -> Store:
    """The Store at settings.LAYERHUB_STORE, created once per process and path.

    Keyed by path rather than cached outright, so a test that points LAYERHUB_STORE elsewhere
    gets a store there instead of the one an earlier test opened.
    """
    return _store_at(Path(settings.LAYERHUB_STORE))
