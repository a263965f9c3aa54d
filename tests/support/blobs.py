"""Tests that look at blob files on disk: the store's local driver, checked to be in use."""

from __future__ import annotations

from layerhub.engine.store import LocalBlobs, Store


def local_blobs(store: Store) -> LocalBlobs:
    """The store's blobs as files (``blobs/sha256/``); fails a test run on another driver."""
    assert isinstance(store.blobs, LocalBlobs), f"blobs are not local: {store.blobs.where()}"
    return store.blobs
