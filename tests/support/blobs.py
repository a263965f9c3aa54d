"""Tests that look at blobs where they are kept: files on disk (the local driver, checked to
be in use), or objects in the object store."""

from __future__ import annotations

import obstore

from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.engine.store import LocalBlobs, Store


def local_blobs(store: Store) -> LocalBlobs:
    """The store's blobs as files (``blobs/sha256/``); fails a test run on another driver."""
    assert isinstance(store.blobs, LocalBlobs), f"blobs are not local: {store.blobs.where()}"
    return store.blobs


def corrupt_blob(store: Store, digest: str, data: bytes) -> None:
    """Put ``data`` where the blob ``digest`` is kept, bypassing every check (a disk or an
    object store that went bad)."""
    blobs = store.blobs
    if isinstance(blobs, LocalBlobs):
        path = blobs.path(digest)
        if path.exists():
            path.chmod(0o644)
        path.write_bytes(data)
        return
    assert isinstance(blobs, S3Blobs)
    obstore.delete(blobs.client, blobs.key(digest))
    obstore.put(blobs.client, blobs.key(digest), data)
