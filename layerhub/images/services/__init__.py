"""The image catalog's services: starting pulls and imports (enqueue.py); running them, and
logins (pull.py); tags (tags.py); pushes, exports and removal (transfer.py). Everything that
ties the engine's image work to the database is here.

The names below are loaded on first use, from the module that defines them: what only starts
a job (``manage.py pull``, a form) imports enqueue.py alone, not the registry client, archive
reader and store code that running one needs (a tenth of a warm CLI pull's wall time).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerhub.images.services.enqueue import image_import, image_pull
    from layerhub.images.services.pull import (
        StoredImage,
        image_import_run,
        image_layer_descriptors,
        image_pull_run,
        image_record,
        image_snapshots_ensure,
        image_unpack_run,
        layer_mark_unpacked,
        registry_client_for,
        registry_login,
        registry_logout,
    )
    from layerhub.images.services.tags import tag_add, tag_remove

# each exported name and the module (in this package) that defines it
_HOME = {
    "image_import": "enqueue",
    "image_pull": "enqueue",
    "StoredImage": "pull",
    "image_import_run": "pull",
    "image_layer_descriptors": "pull",
    "image_pull_run": "pull",
    "image_record": "pull",
    "image_snapshots_ensure": "pull",
    "image_unpack_run": "pull",
    "layer_mark_unpacked": "pull",
    "registry_client_for": "pull",
    "registry_login": "pull",
    "registry_logout": "pull",
    "tag_add": "tags",
    "tag_remove": "tags",
}

__all__ = [
    "StoredImage",
    "image_import",
    "image_import_run",
    "image_layer_descriptors",
    "image_pull",
    "image_pull_run",
    "image_record",
    "image_snapshots_ensure",
    "image_unpack_run",
    "layer_mark_unpacked",
    "registry_client_for",
    "registry_login",
    "registry_logout",
    "tag_add",
    "tag_remove",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value
