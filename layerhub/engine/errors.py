"""Errors a user can cause, as typed exceptions.

Everything above the engine (pages, the API, the CLI) turns these into a clear message; anything
else escaping the engine is a bug. Each class carries a message meant for a person.
"""

from __future__ import annotations

import errno

# what the file system says when the disk (or the user's quota) is full: a StoreFull
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class LayerhubError(Exception):
    """Base of every error a user can cause: a bad input, never a bug."""


class HostFault(Exception):
    """A fault of this host, not of anybody's input: an overlay that would not unmount, a
    runtime that could not delete its container. Deliberately not a LayerhubError: it is
    logged as a bug and shown as an internal error, never as the user's mistake."""


class InvalidDigest(LayerhubError):
    """A string that is not a well-formed ``algorithm:hex`` digest we support."""


class DigestMismatch(LayerhubError):
    """Content whose sha256 or size is not the one it was announced with."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"digest mismatch for {what}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class SizeMismatch(LayerhubError):
    """Content longer or shorter than the size it was announced with."""

    def __init__(self, expected: int, actual: int, what: str = "content") -> None:
        super().__init__(f"size mismatch for {what}: expected {expected} bytes, got {actual}")
        self.expected = expected
        self.actual = actual


class BlobNotFound(LayerhubError):
    """A digest the content store does not hold."""


class SnapshotNotFound(LayerhubError):
    """A ChainID with no unpacked snapshot in the store."""


class LayerError(LayerhubError):
    """A layer archive that cannot be applied."""


class UnsupportedCompression(LayerError):
    """A layer compressed with something other than gzip or zstd (or not at all)."""


class CorruptArchive(LayerError):
    """A layer whose tar (or compressed) stream is truncated or malformed."""


class UnsafeEntry(LayerError):
    """A tar entry that would write outside its snapshot or that we refuse to create.

    ``name`` is the entry's path as written in the archive.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"refused tar entry {name!r}: {reason}")
        self.name = name
        self.reason = reason


class PathTraversal(UnsafeEntry):
    """An absolute path, or one whose ``..`` climbs out of the snapshot."""


class SymlinkEscape(UnsafeEntry):
    """An entry whose path goes through a symlink pointing outside the snapshot."""


class HardlinkEscape(UnsafeEntry):
    """A hardlink whose target is outside the snapshot or not yet in it."""


class DeviceNotPermitted(UnsafeEntry):
    """A device node or FIFO, which only a privileged unpack may create."""


class LimitExceeded(LayerError):
    """A layer past the entry-count or size limits: a tar bomb, or a limit set too low."""


class StoreFull(LayerhubError):
    """The store's file system has less free space than its reserve (or none at all): the
    write was stopped and nothing partial was kept."""

    def __init__(self, free: int, reserve: int, where: str = "the layer store") -> None:
        if reserve > 0:
            detail = f"{free} bytes free, below the reserve of {reserve} bytes"
        else:
            detail = f"no space left ({free} bytes free)"
        super().__init__(f"{where} is full: {detail}")
        self.free = free
        self.reserve = reserve


class StoreLayoutError(LayerhubError):
    """A store whose layout on disk this version cannot use as it is (an older layout that must
    be migrated first, or one written by a newer version)."""


class PathNotFound(LayerhubError):
    """A path that does not exist in an image or container view."""


class InvalidPath(LayerhubError):
    """A path that is not a clean absolute path inside an image or container."""


class InvalidReference(LayerhubError):
    """An image reference that does not parse, such as ``debian:bookworm`` or
    ``host:5000/team/app@sha256:...`` would."""


class InvalidManifest(LayerhubError):
    """A manifest, index or image config that is malformed or of a kind we do not support."""


class RegistryError(LayerhubError):
    """A registry refused a request; the message carries what it said."""


class RegistryAuthError(RegistryError):
    """Missing or refused credentials, or a token service that would not give a token."""


class RegistryUnavailable(RegistryError):
    """A registry that did not answer, or kept failing, after retries: worth trying later."""


class RegistryTimeout(RegistryUnavailable):
    """A registry too slow to be waited for: a small document (manifest, config, token, error
    body) that did not arrive within its deadline, or a download that got no bytes for the
    stall period."""


class RegistryTLSError(RegistryError):
    """A TLS connection to a registry that cannot be trusted or set up: a certificate for
    another name, an expired one, one from an unknown authority, a client certificate the
    registry asks for and was not given, or a certs.d file that cannot be used. Never
    retried: the message names the host and the reason."""


class ManifestUnknown(RegistryError):
    """No such repository, tag or manifest digest in the registry."""


class BlobUnknown(RegistryError):
    """A blob the registry does not have."""


class ArchiveError(LayerhubError):
    """A ``docker save`` archive or OCI layout that is malformed or incomplete."""


class ContainerPathError(LayerhubError):
    """A change a container's filesystem cannot take: a missing parent, a directory where a
    file is asked for, a non-empty directory removed without ``recursive``..."""


class RuntimeUnavailable(LayerhubError):
    """Running commands is not possible on this host (it says what is missing)."""


class CommandTimeout(LayerhubError):
    """A command in a container ran past its time limit and was killed."""


class InvalidChange(LayerhubError):
    """A ``--change`` instruction for commit that is not one of CMD, ENTRYPOINT, ENV, EXPOSE,
    LABEL, USER, VOLUME, WORKDIR, or that does not parse."""


class ImageNotFound(LayerhubError):
    """No image in the catalog by that reference, image ID or digest."""


class ContainerNotFound(LayerhubError):
    """No container by that name or ID."""


class Conflict(LayerhubError):
    """A name already taken, or something still in use (an image a container runs on)."""


class QuotaExceeded(LayerhubError):
    """A pull, import or commit would take a team's images past its quota."""


class BlobStoreUnavailable(LayerhubError):
    """The object store holding the blobs (``LAYERHUB_BLOBS``) could not be reached, refused
    the keys, or failed a request: nothing partial was kept."""
