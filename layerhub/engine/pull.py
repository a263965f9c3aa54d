"""Pull an image into the store and unpack its layers into snapshots, as ``docker pull`` does.

Pull fetches the manifest (choosing the platform in an index) and the config, then brings
every layer in through the pipeline (pipeline.py): each missing blob is downloaded and
unpacked in one pass, layers in parallel, and everything is published after one flush of the
store. A layer already in the store is not fetched again ("Already exists"), and a blob or
snapshot another worker is making is waited for rather than made twice. The manifest is
stored last: a manifest in the store means every blob it names is there too.

Unpack (the unpack job's, for an import or a retry) makes the snapshots of layers whose
blobs are in the store, through the same pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

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
from .pipeline import (
    DOWNLOADED,
    DOWNLOADING,
    EXISTS,
    WAITING,
    LayerPipeline,
)
from .pipeline import (
    ProgressFn as ProgressFn,
)
from .pipeline import (
    UnpackedLayer as UnpackedLayer,
)
from .reference import Reference
from .registry import RegistryClient
from .store import BlobSink, Store
from .store import Descriptor as BlobDescriptor

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
    # after a pull that unpacked: each layer's snapshot, bottom first
    layers: tuple[UnpackedLayer, ...] = ()


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
    unpacks: int | None = None,
    heartbeat: Callable[[], None] | None = None,
    lease: LeaseFn = _no_lease,
    should_stop: StopFn = never,
    source: SourceFn | None = None,
    unpack: bool = True,
    durable: bool = True,
) -> ResolvedImage:
    """Fetch an image's manifest, config and missing layers into the store, and (with
    ``unpack``) make every layer's snapshot on the way, in one pass over each layer's bytes.

    ``lease`` is called with each digest and ChainID the image names before the store is
    asked whether it has them: the config as soon as the manifest names it, then the
    manifest, the layers and their ChainIDs. ``should_stop`` is asked at every chunk, from
    the download threads (so it must be cheap): the pull then stops, keeping what it had
    verified, and the manifest is not stored. ``concurrency`` downloads and ``unpacks``
    unpacks (one per core by default) run at once. The result's ``layers`` says, per layer,
    whether its snapshot was made, found, or could not be made (its blob is kept then: an
    unpack job retries it and reports why).
    """
    image = resolve(client, ref, store, platform, lease)
    lease([image.manifest_digest, *chain_ids(image.config.diff_ids)])
    if not unpack:
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
        layers: list[UnpackedLayer] = []
    else:
        lease([layer.digest for layer in image.manifest.layers])

        def fetch(
            desc: Descriptor,
            blobs: BlobSink,
            done: Callable[[int], None],
            served: Callable[[str], None] | None,
        ) -> BlobDescriptor:
            return client.fetch_blob(
                ref.repository, desc.digest, desc.size, blobs, done, source=served
            )

        layers = LayerPipeline(
            store,
            image.manifest.layers,
            image.config.diff_ids,
            fetch=fetch,
            progress=progress,
            should_stop=should_stop,
            heartbeat=heartbeat,
            source=source,
            downloads=concurrency,
            unpacks=unpacks,
            durable=durable,
            keep_going=True,
        ).run()
    stop_point(should_stop, "pull")
    with blob_lock(store, image.manifest_digest):  # where a delete checks the lease
        store.blobs.put_bytes(image.manifest_bytes, image.manifest_digest)
    return dataclasses.replace(image, layers=tuple(layers))


def unpack(
    store: Store,
    layers: Sequence[Descriptor],
    diff_ids: Sequence[str],
    *,
    progress: ProgressFn = _no_progress,
    should_stop: StopFn = never,
    heartbeat: Callable[[], None] | None = None,
    unpacks: int | None = None,
) -> list[UnpackedLayer]:
    """Unpack each layer (its blob in the store) into its snapshot, several at once;
    existing snapshots are kept as they are.

    ``should_stop`` is asked, from the calling thread, before each layer starts: True
    raises Cancelled there once the layers already started have ended, keeping those (each
    complete) and no partial one.
    """
    return LayerPipeline(
        store,
        layers,
        diff_ids,
        progress=progress,
        should_stop=should_stop,
        heartbeat=heartbeat,
        unpacks=unpacks,
    ).run()
