"""Pull an image into the store, and unpack its layers into snapshots, as ``docker pull`` does.

Pull fetches the manifest (choosing the platform in an index), the config and every layer blob
the store does not have yet, several at a time. A layer already in the store is not fetched
again ("Already exists"), and a blob being fetched by another worker is waited for rather than
fetched twice (a lock per digest). The manifest is stored last: a manifest in the store means
every blob it names is there too.

Unpack turns each layer into its snapshot, bottom up, skipping the ones that exist (a lock per
ChainID makes concurrent unpacks of a shared base do the work once).
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from .cancel import Cancelled, StopFn, never, stop_point
from .digest import chain_ids, digest_hex
from .errors import InvalidManifest, ManifestUnknown
from .fsutil import file_lock
from .manifest import (
    MAX_CONFIG_BYTES,
    Descriptor,
    ImageConfig,
    ImageManifest,
    Index,
    Platform,
    check_platform,
    config_summary,
    config_too_large,
    parse_config,
    parse_manifest,
    select_platform,
)
from .parallel import run_bounded
from .reference import Reference
from .registry import RegistryClient
from .store import Store

WAITING = "Waiting"
DOWNLOADING = "Downloading"
DOWNLOADED = "Download complete"
EXISTS = "Already exists"
EXTRACTING = "Extracting"
COMPLETE = "Pull complete"

# digest, status, bytes done, bytes in all
ProgressFn = Callable[[str, str, int, int], None]
# told which host a layer is being downloaded from (digest, host): a mirror or the registry
SourceFn = Callable[[str, str], None]
# records, durably, that the caller will reference these digests and ChainIDs (a lease), so
# nothing deletes them once they are judged "already there"
LeaseFn = Callable[[Sequence[str]], None]


def _no_progress(digest: str, status: str, current: int, total: int) -> None:
    pass


def _no_lease(keys: Sequence[str]) -> None:
    pass


@dataclass(frozen=True)
class ResolvedImage:
    """An image's manifest and config, fetched and verified."""

    manifest_digest: str
    manifest: ImageManifest
    manifest_bytes: bytes
    index_digest: str | None
    config_digest: str
    config: ImageConfig


@dataclass(frozen=True)
class UnpackedLayer:
    """A layer's snapshot: its ChainID, and what it holds when this call unpacked it (a
    snapshot found made is not walked again: whoever made it recorded its sizes)."""

    chain_id: str
    diff_id: str
    created: bool
    unpacked_size: int | None
    file_count: int | None  # entries that are not directories (files, links, devices)


def blob_lock(store: Store, digest: str) -> AbstractContextManager[None]:
    """The lock two workers take before fetching the same blob."""
    return file_lock(store.locks / f"blob-{digest_hex(digest)}.lock")


def resolve(
    client: RegistryClient,
    ref: Reference,
    store: Store,
    platform: Platform | None = None,
    lease: LeaseFn = _no_lease,
) -> ResolvedImage:
    """Fetch and check the manifest (through an index if need be) and the config.

    ``platform`` picks the entry of an index (linux/amd64 when None); a single-platform
    image must then be that platform too, while with None it is taken whatever it is.
    """
    try:
        data, content_type, digest = client.get_manifest(ref.repository, ref.target)
    except ManifestUnknown as exc:
        raise ManifestUnknown(f"manifest for {ref} not found: {exc}") from None
    parsed = parse_manifest(data, content_type)
    index_digest = None
    if isinstance(parsed, Index):
        lease([digest])
        with blob_lock(store, digest):
            store.blobs.put_bytes(data, digest)
        index_digest = digest
        chosen = select_platform(parsed, platform or Platform())
        data, content_type, digest = client.get_manifest(ref.repository, chosen.digest)
        parsed = parse_manifest(data, content_type)
        if not isinstance(parsed, ImageManifest):
            raise InvalidManifest(f"index entry {chosen.digest} is not an image manifest")
    config_desc = parsed.config
    if config_desc.size > MAX_CONFIG_BYTES:  # refused before a byte of it is fetched
        raise InvalidManifest(config_too_large(config_desc.size))
    lease([config_desc.digest])  # before "already there" is judged, under the lock
    with blob_lock(store, config_desc.digest):
        if not store.blobs.has(config_desc.digest):
            client.fetch_blob(
                ref.repository, config_desc.digest, config_desc.size, store.blobs, small=True
            )
    config = parse_config(store.blobs.read_bytes(config_desc.digest))
    if platform is not None and index_digest is None:
        check_platform(config, platform)
    config_summary(config.doc)  # what the catalog will keep must be keepable: refuse it now
    if len(config.diff_ids) != len(parsed.layers):
        raise InvalidManifest(
            f"manifest has {len(parsed.layers)} layers but its config lists "
            f"{len(config.diff_ids)} DiffIDs"
        )
    return ResolvedImage(digest, parsed, data, index_digest, config_desc.digest, config)


def fetch_layers(
    client: RegistryClient,
    repository: str,
    layers: Sequence[Descriptor],
    store: Store,
    *,
    progress: ProgressFn = _no_progress,
    concurrency: int = 3,
    heartbeat: Callable[[], None] | None = None,
    lease: LeaseFn = _no_lease,
    should_stop: StopFn = never,
    source: SourceFn | None = None,
) -> None:
    """Download every layer blob the store lacks, ``concurrency`` at a time.

    ``progress`` is called from the download threads; ``heartbeat``, if given, from the
    calling thread about twice a second while they run (to save progress, say). ``lease``
    is called with every layer digest first, from the calling thread; whether a blob is
    already there is then decided under its lock, which is where deletes check leases.
    ``should_stop`` is asked at every chunk, from the download threads (so it must be
    cheap): True raises Cancelled there, and the blob being written is discarded.
    ``source``, if given, is told the host each layer's download goes to.
    """
    lease([layer.digest for layer in layers])
    failed = threading.Event()
    already = {layer.digest for layer in layers if store.blobs.has(layer.digest)}

    def fetch(layer: Descriptor) -> None:
        if failed.is_set():
            return
        try:
            stop_point(should_stop, f"download of {layer.digest}")
        except Cancelled:
            failed.set()
            raise
        with blob_lock(store, layer.digest):
            if store.blobs.has(layer.digest):
                if layer.digest not in already:  # another worker fetched it meanwhile
                    progress(layer.digest, EXISTS, layer.size, layer.size)
                return

            def downloading(done: int) -> None:
                if failed.is_set():
                    raise InterruptedError("another layer failed")
                stop_point(should_stop, f"download of {layer.digest}")
                progress(layer.digest, DOWNLOADING, done, layer.size)

            served = None if source is None else functools.partial(source, layer.digest)
            try:
                client.fetch_blob(
                    repository, layer.digest, layer.size, store.blobs, downloading, source=served
                )
            except BaseException:
                failed.set()
                raise
            progress(layer.digest, DOWNLOADED, layer.size, layer.size)

    for layer in layers:  # every layer's first line, in manifest order
        if layer.digest in already:
            progress(layer.digest, EXISTS, layer.size, layer.size)
        else:
            progress(layer.digest, WAITING, 0, layer.size)
    unique = list({layer.digest: layer for layer in layers}.values())
    run_bounded(
        [functools.partial(fetch, layer) for layer in unique],
        concurrency=concurrency,
        heartbeat=heartbeat,
    )


def pull(
    client: RegistryClient,
    ref: Reference,
    store: Store,
    *,
    platform: Platform | None = None,
    progress: ProgressFn = _no_progress,
    concurrency: int = 3,
    heartbeat: Callable[[], None] | None = None,
    lease: LeaseFn = _no_lease,
    should_stop: StopFn = never,
    source: SourceFn | None = None,
) -> ResolvedImage:
    """Fetch an image's manifest, config and missing layers into the store.

    ``lease`` is called with each digest and ChainID the image names before the store is
    asked whether it has them: the config as soon as the manifest names it, then the
    manifest, the layers and their ChainIDs (the snapshots an unpack will want).
    ``should_stop`` (see fetch_layers) stops the pull at its next chunk; the manifest is
    then not stored.
    """
    image = resolve(client, ref, store, platform, lease)
    lease([image.manifest_digest, *chain_ids(image.config.diff_ids)])
    fetch_layers(
        client,
        ref.repository,
        image.manifest.layers,
        store,
        progress=progress,
        concurrency=concurrency,
        heartbeat=heartbeat,
        lease=lease,
        should_stop=should_stop,
        source=source,
    )
    stop_point(should_stop, "pull")
    with blob_lock(store, image.manifest_digest):  # where a delete checks the lease
        store.blobs.put_bytes(image.manifest_bytes, image.manifest_digest)
    return image


class _LazyBlob(io.RawIOBase):
    """A layer blob opened on the first read (and its "Extracting" line shown then)."""

    def __init__(self, store: Store, layer: Descriptor, progress: ProgressFn) -> None:
        super().__init__()
        self._store = store
        self._layer = layer
        self._progress = progress
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._file is None:
            self._progress(self._layer.digest, EXTRACTING, 0, self._layer.size)
            self._file = self._store.blobs.open(self._layer.digest)
        view = memoryview(buffer).cast("B")
        data = self._file.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def unpack(
    store: Store,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    *,
    progress: ProgressFn = _no_progress,
    should_stop: StopFn = never,
) -> list[UnpackedLayer]:
    """Unpack each layer into its snapshot, bottom up; existing snapshots are kept as they are.

    ``should_stop`` is asked before each layer: True raises Cancelled there, leaving the
    snapshots made so far (each complete) and no partial one.
    """
    out: list[UnpackedLayer] = []
    for layer, diff_id, chain_id in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
        stop_point(should_stop, "unpack")
        # "Already there" is decided under the snapshot's lock, where a delete checks leases
        # too: the blob is opened only when the snapshot is found missing there
        with _LazyBlob(store, layer, progress) as blob:
            result = store.snapshots.unpack(chain_id, cast(BinaryIO, blob), diff_id=diff_id)
        if result.applied is None:  # there already, or another worker unpacked it meanwhile
            out.append(UnpackedLayer(chain_id, diff_id, False, None, None))
            progress(layer.digest, EXISTS, layer.size, layer.size)
            continue
        applied = result.applied
        out.append(
            UnpackedLayer(chain_id, diff_id, True, applied.unpacked_size, applied.file_count)
        )
        progress(layer.digest, COMPLETE, layer.size, layer.size)
    return out
