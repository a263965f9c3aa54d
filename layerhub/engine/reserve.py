"""The free space the store leaves on its file system (``LAYERHUB_STORE_RESERVE``).

Apart from store.py so that reading the settings, the first thing every process and command
does, imports this alone and not the store and the file system code behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StoreReserve:
    """Free space the store leaves on its file system: at least ``bytes``, and at least
    ``percent`` of the file system's size (the larger wins)."""

    bytes: int = 0
    percent: float = 0.0

    def resolve(self, total: int) -> int:
        """The reserve in bytes on a file system of ``total`` bytes."""
        return max(self.bytes, math.ceil(total * self.percent / 100))


# what a deployment keeps free unless told otherwise: 1 GiB, or 5% of a big disk
DEFAULT_RESERVE = StoreReserve(bytes=1 << 30, percent=5.0)
