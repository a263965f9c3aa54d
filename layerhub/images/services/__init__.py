"""The image catalog's services: pulls, imports, logins (pull.py); pushes, exports and removal
(transfer.py, imported from there). Everything that ties the engine's image work to the
database is here."""

from __future__ import annotations

from layerhub.images.services.pull import (
    StoredImage,
    image_import,
    image_import_run,
    image_layer_descriptors,
    image_pull,
    image_pull_run,
    image_record,
    image_unpack_run,
    layer_mark_unpacked,
    registry_client_for,
    registry_login,
    registry_logout,
)
from layerhub.images.services.tags import tag_add, tag_remove

__all__ = [
    "StoredImage",
    "image_import",
    "image_import_run",
    "image_layer_descriptors",
    "image_pull",
    "image_pull_run",
    "image_record",
    "image_unpack_run",
    "layer_mark_unpacked",
    "registry_client_for",
    "registry_login",
    "registry_logout",
    "tag_add",
    "tag_remove",
]
