"""Content digests as the OCI image-spec defines them.

- a *digest* is ``sha256:<64 lowercase hex>`` of some bytes (a blob, a config, a manifest);
- a layer's *DiffID* is the digest of its uncompressed tar;
- a layer's *ChainID* names the stack of layers up to and including it:
  ``ChainID(L0) = DiffID(L0)``,
  ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))``;
- an *image ID* is the digest of the image's config JSON, byte for byte.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from .errors import DigestMismatch, InvalidDigest, SizeMismatch

ALGORITHM = "sha256"
CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")


def validate_digest(digest: str) -> str:
    """Return ``digest`` unchanged if it is a well-formed sha256 digest, else raise InvalidDigest.

    Only sha256 is accepted: it is what every registry and runtime writes, and a digest string
    later becomes a file name, so nothing looser may pass.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise InvalidDigest(f"not a sha256 digest: {digest!r}")
    return digest


def digest_hex(digest: str) -> str:
    """The hex part of a validated digest (its file name in the store)."""
    return validate_digest(digest).split(":", 1)[1]


def short_id(digest: str, length: int = 12) -> str:
    """The first ``length`` hex characters, as ``docker images`` shows IMAGE ID."""
    return digest_hex(digest)[:length]


class Digester:
    """Streaming sha256 that also counts bytes: feed it chunks, read ``digest`` and ``size``."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add a chunk."""
        self._hash.update(data)
        self.size += len(data)

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of everything fed so far."""
        return f"{ALGORITHM}:{self._hash.hexdigest()}"


class CheckedDigester(Digester):
    """A Digester held to what was announced, as every download, upload and copy of a blob
    is: ``update`` refuses the first byte past ``expected_size``, and ``check`` wants exactly
    that size and then ``expected_digest`` (either None: not checked). ``what`` names the
    bytes in the errors."""

    __slots__ = ("expected_digest", "expected_size", "what")

    def __init__(self, expected_digest: str | None, expected_size: int | None, what: str) -> None:
        super().__init__()
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self.what = what

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add a chunk; SizeMismatch once more bytes came than announced."""
        super().update(data)
        if self.expected_size is not None and self.size > self.expected_size:
            raise SizeMismatch(self.expected_size, self.size, self.what)

    def check(self) -> str:
        """The digest of the bytes, once their size and digest are the announced ones."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise SizeMismatch(self.expected_size, self.size, self.what)
        digest = self.digest
        if self.expected_digest is not None and digest != self.expected_digest:
            raise DigestMismatch(self.expected_digest, digest, self.what)
        return digest


def sha256_bytes(data: bytes) -> str:
    """Digest of a byte string."""
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def sha256_stream(stream: BinaryIO) -> tuple[str, int]:
    """Digest and size of everything left in ``stream``, read in constant memory."""
    digester = Digester()
    for chunk in iter(lambda: stream.read(CHUNK), b""):
        digester.update(chunk)
    return digester.digest, digester.size


def sha256_file(path: Path) -> tuple[str, int]:
    """Digest and size of a file."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def chain_id(diff_ids: Sequence[str]) -> str:
    """ChainID of a stack of layers given bottom first by their DiffIDs."""
    if not diff_ids:
        raise ValueError("a ChainID needs at least one DiffID")
    current = validate_digest(diff_ids[0])
    for diff_id in diff_ids[1:]:
        current = sha256_bytes(f"{current} {validate_digest(diff_id)}".encode())
    return current


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """ChainIDs of every prefix of a layer stack: the snapshot key of each layer in an image."""
    out: list[str] = []
    for diff_id in diff_ids:
        validate_digest(diff_id)
        out.append(diff_id if not out else sha256_bytes(f"{out[-1]} {diff_id}".encode()))
    return out


def image_id(config: bytes) -> str:
    """Image ID: the digest of the config JSON exactly as stored (never re-serialized)."""
    return sha256_bytes(config)
