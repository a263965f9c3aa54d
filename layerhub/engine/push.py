"""Push an image from the store to a registry, as ``docker push`` does.

Every blob (layers, then the config) is checked with a HEAD first and skipped if the registry
has it ("Layer already exists"); a blob another repository of the same registry holds is
mounted from there when the caller says where ("Mounted from team/base"); anything else is
uploaded, streamed from the store, several blobs at a time. The manifest goes last, once
every blob it names is in the registry, and the digest the registry reports for it must be
the one of the bytes sent.

Progress lines are the ones ``docker push`` prints, per layer: "Preparing", "Waiting",
"Pushing" (bytes sent of the layer's size), then "Pushed", "Layer already exists" or
"Mounted from <repository>". The config is pushed without lines of its own, as Docker does.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from .cancel import StopFn, never, stop_point
from .digest import sha256_bytes
from .errors import DigestMismatch, RegistryAuthError, RegistryUnavailable, SizeMismatch
from .manifest import Descriptor, ImageManifest, parse_manifest
from .parallel import run_bounded
from .pull import ProgressFn
from .registry import RegistryClient, UploadSession
from .store import Store

PREPARING = "Preparing"
WAITING = "Waiting"
PUSHING = "Pushing"
PUSHED = "Pushed"
EXISTS = "Layer already exists"
MOUNTED = "Mounted from"  # followed by the repository: "Mounted from team/base"


def _no_progress(digest: str, status: str, current: int, total: int) -> None:
    pass


class _Cancelled(Exception):
    """Stops an upload because another blob of the same push failed (never escapes)."""


def push_image(
    client: RegistryClient,
    repository: str,
    reference: str,
    manifest_bytes: bytes,
    media_type: str,
    blobs: Sequence[Descriptor],
    store: Store,
    *,
    mount_from: Mapping[str, str] | None = None,
    progress: ProgressFn = _no_progress,
    chunk_size: int | None = None,
    concurrency: int = 3,
    heartbeat: Callable[[], None] | None = None,
    should_stop: StopFn = never,
) -> str:
    """Push the blobs, then the manifest under ``reference`` (a tag or the manifest's digest),
    to ``repository``; return the manifest digest.

    ``blobs`` are the config and layers the manifest names, all in the store.
    ``mount_from`` maps a blob digest to another repository of this registry that holds it.
    ``chunk_size`` switches uploads from one PUT per blob to PATCH requests of that size.
    ``progress`` is called from the upload threads; ``heartbeat``, if given, from the calling
    thread about twice a second while they run. ``should_stop`` is asked at every chunk, from
    the upload threads (so it must be cheap): True raises Cancelled there, the upload
    session is cancelled and the manifest is not pushed.
    """
    digest = sha256_bytes(manifest_bytes)
    if reference.startswith("sha256:") and reference != digest:
        raise DigestMismatch(reference, digest, f"manifest pushed as {repository}@{reference}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be a positive number of bytes")
    parsed = parse_manifest(manifest_bytes, media_type)
    config = parsed.config.digest if isinstance(parsed, ImageManifest) else None
    unique = list({blob.digest: blob for blob in blobs}.values())
    for blob in unique:  # fail before talking to the registry, not halfway through the push
        size = store.blobs.size(blob.digest)
        if size != blob.size:
            raise SizeMismatch(blob.size, size, f"blob {blob.digest} in the store")
    layers = [blob for blob in unique if blob.digest != config]
    # the config after the layers, as Docker orders it; it gets no progress lines
    ordered = layers + [blob for blob in unique if blob.digest == config]

    def report(blob: Descriptor, status: str, current: int) -> None:
        if blob.digest != config:
            progress(blob.digest, status, current, blob.size)

    try:
        for layer in layers:
            report(layer, PREPARING, 0)
        for layer in layers:
            report(layer, WAITING, 0)
        _push_blobs(
            client,
            repository,
            ordered,
            store,
            mount_from or {},
            report,
            chunk_size,
            concurrency,
            heartbeat,
            should_stop,
        )
        stop_point(should_stop, "push")
        return client.put_manifest(repository, reference, manifest_bytes, media_type)
    except RegistryAuthError as exc:
        hint = "" if client.credentials is not None else f"; log in to {client.host} first"
        raise RegistryAuthError(
            f"push to {client.host}/{repository} was refused: {exc}{hint}"
        ) from exc


def _push_blobs(
    client: RegistryClient,
    repository: str,
    blobs: Sequence[Descriptor],
    store: Store,
    mount_from: Mapping[str, str],
    report: Callable[[Descriptor, str, int], None],
    chunk_size: int | None,
    concurrency: int,
    heartbeat: Callable[[], None] | None,
    should_stop: StopFn,
) -> None:
    failed = threading.Event()

    def push(blob: Descriptor) -> None:
        if failed.is_set():
            return
        try:
            stop_point(should_stop, "push")
            _push_blob(
                client,
                repository,
                blob,
                store,
                mount_from,
                report,
                chunk_size,
                failed,
                should_stop,
            )
        except BaseException:
            failed.set()
            raise

    run_bounded(
        [functools.partial(push, blob) for blob in blobs],
        concurrency=concurrency,
        heartbeat=heartbeat,
        knock_on=_Cancelled,
    )


def _push_blob(
    client: RegistryClient,
    repository: str,
    blob: Descriptor,
    store: Store,
    mount_from: Mapping[str, str],
    report: Callable[[Descriptor, str, int], None],
    chunk_size: int | None,
    failed: threading.Event,
    should_stop: StopFn,
) -> None:
    """One blob: skip, mount or upload it. A transient failure mid-upload starts the upload
    over in a new session (the old one's state is unknown), as ``docker push`` retries."""
    if client.blob_exists(repository, blob.digest, for_push=True):
        report(blob, EXISTS, blob.size)
        return
    upload: UploadSession | None = None
    source = mount_from.get(blob.digest)
    if source and source != repository:
        try:
            upload = client.mount_blob(repository, blob.digest, source)
        except RegistryAuthError:
            # no pull rights on the source: upload it like any other blob
            upload = None
        else:
            if upload is None:
                report(blob, f"{MOUNTED} {source}", blob.size)
                return

    def pushing(done: int) -> None:
        if failed.is_set():
            raise _Cancelled("another blob of this push failed")
        stop_point(should_stop, f"push of {blob.digest}")
        report(blob, PUSHING, done)

    attempt = 0
    while True:
        if upload is None:
            upload = client.start_upload(repository)
        report(blob, PUSHING, 0)
        try:
            client.push_blob(
                upload, store.blobs, blob.digest, chunk_size=chunk_size, progress=pushing
            )
        except RegistryUnavailable:
            client.cancel_upload(upload)
            upload = None
            attempt += 1
            if attempt > client.retries or failed.is_set():
                raise
            time.sleep(client.backoff * 2 ** (attempt - 1))
            # the last attempt may have gone through with only its answer lost
            if client.blob_exists(repository, blob.digest, for_push=True):
                break
            continue
        except BaseException:
            client.cancel_upload(upload)
            raise
        break
    report(blob, PUSHED, blob.size)
