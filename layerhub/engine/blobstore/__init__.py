"""Where blobs (compressed layers, configs, manifests) live: a small interface, two drivers.

- ``local`` (the default): files at ``<store>/blobs/sha256/<hex>``, written to ``tmp/``,
  verified and renamed into place (``local.LocalBlobs``).
- ``s3``: objects at ``<prefix>/sha256/<hex>`` in an S3-compatible bucket shared by every host
  (``s3.S3Blobs``), chosen with ``LAYERHUB_BLOBS=s3://bucket/prefix``; the endpoint, region
  and keys come from the standard ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``
  and ``AWS_SECRET_ACCESS_KEY``.

Both promise the same things (``base.BlobStore``): a blob becomes visible only once its
digest and size checked out, writes are create-only (two writers of one digest leave one
blob, a wrong digest leaves none), and reads take a Range. This module only parses the
setting: a driver is imported when a store is opened with it, so a command that merely
queues a job never loads an S3 client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pathlib import Path

    from .base import BlobStore

# S3's bucket naming rules (3-63 of lowercase letters, digits, dots and hyphens)
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")


@dataclass(frozen=True)
class BlobsLocation:
    """Where blobs live: ``local`` (the store's own ``blobs/``) or an S3 bucket and prefix."""

    driver: str
    bucket: str = ""
    prefix: str = ""

    def __str__(self) -> str:
        if self.driver == "local":
            return "local"
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


LOCAL = BlobsLocation("local")


def parse_blobs_url(value: str) -> BlobsLocation:
    """``""`` or ``local`` for the store's own ``blobs/``, or ``s3://bucket[/prefix]``;
    ValueError says what is wrong with anything else."""
    value = value.strip()
    if value in ("", "local"):
        return LOCAL
    parts = urlsplit(value)
    if parts.scheme != "s3":
        raise ValueError(f"{value!r} is neither 'local' nor s3://bucket/prefix")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{value!r}: give s3://bucket/prefix only (keys go in AWS_* variables)")
    if not _BUCKET.fullmatch(parts.netloc):
        raise ValueError(f"{value!r}: {parts.netloc!r} is not an S3 bucket name")
    prefix = parts.path.strip("/")
    if prefix and (
        not _PREFIX.fullmatch(prefix) or any(p in ("", ".", "..") for p in prefix.split("/"))
    ):
        raise ValueError(f"{value!r}: the prefix {prefix!r} is not a plain path")
    return BlobsLocation("s3", parts.netloc, prefix)


def open_blob_store(
    location: BlobsLocation, root: Path, tmp: Path, *, reserve: int = 0
) -> BlobStore:
    """The blob store at ``location`` for the layer store at ``root`` (its ``tmp/`` holds
    writes in flight, whatever the driver)."""
    if location.driver == "local":
        from .local import LocalBlobs

        return LocalBlobs(root / "blobs" / "sha256", tmp, reserve=reserve)
    from .s3 import S3Blobs

    return S3Blobs.from_environment(location.bucket, location.prefix, tmp, reserve=reserve)
