"""Export images from the store as ``docker save`` archives or OCI image layouts (as a tar).

A ``docker save`` archive holds each image's config as ``<hex>.json``, each layer uncompressed
as ``<diffid-hex>/layer.tar``, ``manifest.json`` naming them, and ``repositories`` (the
legacy tag map ``docker load`` still reads): what ``docker load`` and ``skopeo`` read. Layers
the store keeps compressed are decompressed into an unnamed temporary file in the store's
``tmp/`` (a tar header needs the size first), checked against their DiffID, then copied in.

An OCI image layout holds the manifests, configs and layers exactly as stored, so its digests
are the ones the registry served; ``index.json`` names each image by its tag
(``org.opencontainers.image.ref.name``) and by its full reference
(``io.containerd.image.name``), as ``ctr images export`` writes it.

Both are deterministic: entries in name order, fixed times and owners, each blob once however
many images share it. Everything goes to ``out`` in one forward pass (a pipe will do); on any
error the archive is left unfinished and the error raised, for the caller to delete it.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, BinaryIO, Protocol, cast

from .cancel import StopFn, never, stop_point
from .compression import decompressed
from .digest import CHUNK, CheckedDigester, Digester, digest_hex, sha256_bytes, validate_digest
from .errors import ArchiveError, DigestMismatch, SizeMismatch
from .manifest import OCI_INDEX, Descriptor, ImageManifest, parse_config, parse_manifest
from .reference import Reference, parse_reference
from .store import Store

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
MTIME = 0


@dataclass(frozen=True)
class ExportImage:
    """One image to export: its names, its manifest as stored, and what the manifest names.

    ``references`` are full or familiar image references (``127.0.0.1:5000/team/app:1``,
    ``debian:bookworm``); a digest-only reference names no tag.
    """

    references: Sequence[str]
    manifest_bytes: bytes
    media_type: str
    config: Descriptor
    layers: Sequence[Descriptor]
    diff_ids: Sequence[str]
    parsed_references: tuple[Reference, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", tuple(self.references))
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "diff_ids", tuple(validate_digest(d) for d in self.diff_ids))
        parsed = tuple(parse_reference(r) for r in self.references)
        object.__setattr__(self, "parsed_references", parsed)
        if len(self.layers) != len(self.diff_ids):
            raise ArchiveError(
                f"image with {len(self.layers)} layers but {len(self.diff_ids)} DiffIDs"
            )

    @property
    def manifest_digest(self) -> str:
        """The digest of the manifest bytes."""
        return sha256_bytes(self.manifest_bytes)

    @classmethod
    def load(
        cls, store: Store, manifest_digest: str, references: Sequence[str] = ()
    ) -> ExportImage:
        """The image whose manifest (and config) the store holds under ``manifest_digest``."""
        data = store.blobs.read_bytes(manifest_digest)
        parsed = parse_manifest(data)
        if not isinstance(parsed, ImageManifest):
            raise ArchiveError(f"{manifest_digest} is an index, not an image manifest")
        config = parse_config(store.blobs.read_bytes(parsed.config.digest))
        return cls(
            tuple(references),
            data,
            parsed.media_type,
            parsed.config,
            parsed.layers,
            config.diff_ids,
        )


# -- tar writing ---------------------------------------------------------------------------------


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _TarWriter:
    """A forward-only tar writer: PAX headers where needed (long names, sizes past 8 GiB),
    contents copied a MiB at a time, and the two zero blocks at the end; ``out`` may be a
    pipe. (``tarfile``'s own stream mode re-buffers every write in 10 KiB records.)"""

    def __init__(self, out: BinaryIO, should_stop: StopFn = never) -> None:
        self._out = out
        self.should_stop = should_stop

    def add(self, info: tarfile.TarInfo, content: _Readable | None = None) -> None:
        """One entry; ``content`` gives exactly ``info.size`` bytes."""
        info.mtime = MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if content is None:
            return
        left = info.size
        while left:
            stop_point(self.should_stop, "export")
            chunk = content.read(min(CHUNK, left))
            if not chunk:
                raise SizeMismatch(info.size, info.size - left, info.name)
            self._out.write(chunk)
            left -= len(chunk)
        self._out.write(bytes(-info.size % tarfile.BLOCKSIZE))

    def finish(self) -> None:
        self._out.write(bytes(2 * tarfile.BLOCKSIZE))


@dataclass(frozen=True)
class _Entry:
    """A tar entry: a directory, or a file whose ``write`` sets its size and adds it."""

    name: str
    write: Callable[[_TarWriter, tarfile.TarInfo], None] | None = None


def _write_entries(out: BinaryIO, entries: Sequence[_Entry], should_stop: StopFn = never) -> None:
    """Write ``entries`` in name order; a failure (or a stop: Cancelled, checked at every
    chunk) leaves the archive without its end blocks."""
    tar = _TarWriter(out, should_stop)
    for entry in sorted(entries, key=lambda e: e.name):
        info = tarfile.TarInfo(entry.name)
        if entry.write is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.add(info)
        else:
            info.mode = 0o644
            entry.write(tar, info)
    tar.finish()


def _bytes_entry(name: str, data: bytes) -> _Entry:
    def write(tar: _TarWriter, info: tarfile.TarInfo) -> None:
        info.size = len(data)
        tar.add(info, io.BytesIO(data))

    return _Entry(name, write)


class _Verifying:
    """Reads exactly ``size`` bytes of ``stream`` (as the tar writer does) and checks
    them against ``digest`` at the last one, and that nothing follows, before the member is
    complete: a mismatch aborts the archive."""

    def __init__(self, stream: IO[bytes], digest: str, size: int, what: str) -> None:
        self._stream = stream
        self._size = size
        self._digester = CheckedDigester(digest, size, what)
        self._checked = False

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._digester.size
        data = self._stream.read(left if size < 0 else min(size, left))
        self._digester.update(data)
        if self._digester.size == self._size and not self._checked:
            self._checked = True
            if self._stream.read(1):
                raise SizeMismatch(self._size, self._size + 1, self._digester.what)
            self._digester.check()
        return data


def _blob_entry(name: str, store: Store, blob: Descriptor) -> _Entry:
    """A store blob copied as it is, re-verified on the way."""
    size = store.blobs.size(blob.digest)  # BlobNotFound now, before anything is written
    if size != blob.size:
        raise SizeMismatch(blob.size, size, f"blob {blob.digest} in the store")

    def write(tar: _TarWriter, info: tarfile.TarInfo) -> None:
        info.size = size
        with store.blobs.open(blob.digest) as f:
            tar.add(info, _Verifying(f, blob.digest, size, f"blob {blob.digest}"))

    return _Entry(name, write)


def _layer_entry(name: str, store: Store, layer: Descriptor, diff_id: str) -> _Entry:
    """A layer as its uncompressed tar, checked against its DiffID.

    A layer stored uncompressed is its own tar (its digest is its DiffID). Any other is
    decompressed first into an unnamed file in ``tmp/``, since the tar header needs the size:
    the file goes away when closed, or with the process.
    """
    what = f"layer {layer.digest} (DiffID {diff_id})"
    stored = store.blobs.size(layer.digest)  # BlobNotFound now, before anything is written
    if stored != layer.size:
        raise SizeMismatch(layer.size, stored, f"blob {layer.digest} in the store")

    def write(tar: _TarWriter, info: tarfile.TarInfo) -> None:
        if layer.digest == diff_id:
            info.size = layer.size
            with store.blobs.open(layer.digest) as f:
                tar.add(info, _Verifying(f, diff_id, layer.size, what))
            return
        with store.blobs.open(layer.digest) as raw, tempfile.TemporaryFile(dir=store.tmp) as tmp:
            stream, _ = decompressed(raw)
            digester = Digester()
            for chunk in iter(lambda: stream.read(CHUNK), b""):
                stop_point(tar.should_stop, "export")
                digester.update(chunk)
                tmp.write(chunk)
            if digester.digest != diff_id:
                raise DigestMismatch(diff_id, digester.digest, what)
            info.size = digester.size
            tmp.seek(0)
            tar.add(info, tmp)

    return _Entry(name, write)


# -- docker save ---------------------------------------------------------------------------------


def write_docker_archive(
    out: BinaryIO, images: Sequence[ExportImage], store: Store, *, should_stop: StopFn = never
) -> None:
    """Write a ``docker save`` archive of ``images`` to ``out``.

    ``should_stop`` is asked at every chunk: True raises Cancelled, the archive unfinished.
    Images sharing a config (the same image ID) make one entry with all their tags, as
    ``docker save`` writes them; each layer is written once however many images use it.
    """
    if not images:
        raise ArchiveError("nothing to export: no images given")
    entries: list[_Entry] = []
    manifest: list[dict[str, object]] = []
    by_config: dict[str, dict[str, object]] = {}
    repositories: dict[str, dict[str, str]] = {}
    layer_dirs: dict[str, Descriptor] = {}
    for image in images:
        config_hex = digest_hex(image.config.digest)
        item = by_config.get(image.config.digest)
        if item is None:
            entries.append(_blob_entry(f"{config_hex}.json", store, image.config))
            item = {
                "Config": f"{config_hex}.json",
                "RepoTags": [],
                "Layers": [f"{digest_hex(d)}/layer.tar" for d in image.diff_ids],
            }
            by_config[image.config.digest] = item
            manifest.append(item)
            for layer, diff_id in zip(image.layers, image.diff_ids, strict=True):
                layer_dirs.setdefault(diff_id, layer)
        tags = cast(list[str], item["RepoTags"])
        for ref in image.parsed_references:
            if ref.tag is None:
                continue  # docker save keeps tags only
            familiar = ref.with_tag(ref.tag).familiar
            if familiar not in tags:
                tags.append(familiar)
            if image.diff_ids:
                name = familiar.rsplit(":", 1)[0]
                repositories.setdefault(name, {})[ref.tag] = digest_hex(image.diff_ids[-1])
    for diff_id, layer in layer_dirs.items():
        entries.append(_Entry(digest_hex(diff_id)))
        entries.append(_layer_entry(f"{digest_hex(diff_id)}/layer.tar", store, layer, diff_id))
    # docker writes both with Go's json.Encoder: compact, a newline after
    entries.append(_bytes_entry("manifest.json", _go_json(manifest)))
    if repositories:
        entries.append(_bytes_entry("repositories", _go_json(repositories, sort_keys=True)))
    _write_entries(out, entries, should_stop)


def _go_json(value: object, *, sort_keys: bool = False) -> bytes:
    return (json.dumps(value, separators=(",", ":"), sort_keys=sort_keys) + "\n").encode()


# -- OCI image layout ----------------------------------------------------------------------------


def write_oci_layout(
    out: BinaryIO, images: Sequence[ExportImage], store: Store, *, should_stop: StopFn = never
) -> None:
    """Write an OCI image layout of ``images`` to ``out`` as a tar (``oci-archive:``).

    ``should_stop`` is asked at every chunk: True raises Cancelled, the archive unfinished.
    ``index.json`` has one entry per image and name: an image tagged twice is listed twice
    (same digest, one tag each), an image with no name once without annotations.
    """
    if not images:
        raise ArchiveError("nothing to export: no images given")
    blobs: dict[str, _Entry] = {}
    index: list[dict[str, object]] = []
    for image in images:
        digest = image.manifest_digest
        blob_name = f"blobs/sha256/{digest_hex(digest)}"
        blobs.setdefault(blob_name, _bytes_entry(blob_name, image.manifest_bytes))
        for blob in (image.config, *image.layers):
            name = f"blobs/sha256/{digest_hex(blob.digest)}"
            if name not in blobs:
                blobs[name] = _blob_entry(name, store, blob)
        entry: dict[str, object] = {
            "mediaType": image.media_type,
            "digest": digest,
            "size": len(image.manifest_bytes),
        }
        if not image.parsed_references:
            index.append(entry)
        for ref in image.parsed_references:
            annotations = {CONTAINERD_NAME: str(ref)}
            if ref.tag is not None:
                annotations[REF_NAME] = ref.tag
            if {**entry, "annotations": annotations} not in index:
                index.append({**entry, "annotations": annotations})
    entries = list(blobs.values())
    entries += [_Entry("blobs"), _Entry("blobs/sha256")]
    entries.append(_bytes_entry("oci-layout", json.dumps(OCI_LAYOUT).encode()))
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}
    entries.append(_bytes_entry("index.json", json.dumps(doc, sort_keys=True).encode()))
    _write_entries(out, entries, should_stop)
