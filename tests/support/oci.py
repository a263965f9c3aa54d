"""Build OCI images in the tests: layer tars from small trees, configs, manifests, indexes and
OCI image layouts on disk (what ``skopeo copy oci:...`` pushes to a registry)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
MTIME = 1_700_000_000

# a tree: path -> bytes (file), None (directory), ("symlink", target), ("hardlink", target)
# (a path in the same layer), or "whiteout"
Tree = dict[str, "bytes | tuple[str, str] | str | None"]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class LayerBlob(Blob):
    diff_id: str = ""


def layer_tar(tree: Tree) -> bytes:
    """A deterministic uncompressed layer tar of ``tree`` (parents listed before children)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(tree):
            value = tree[path]
            name = path.strip("/")
            if value == "whiteout":
                parent, _, base = name.rpartition("/")
                name = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
                value = b""
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            elif isinstance(value, tuple) and value[0] == "hardlink":
                info.type, info.linkname, info.mode = tarfile.LNKTYPE, value[1], 0o644
                tf.addfile(info)
            elif isinstance(value, tuple):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, value[1], 0o777
                tf.addfile(info)
            else:
                assert isinstance(value, bytes)
                info.size, info.mode = len(value), 0o644
                tf.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def make_layer(tree: Tree, compression: str = "gzip") -> LayerBlob:
    """A layer blob of ``tree``, compressed as asked."""
    raw = layer_tar(tree)
    if compression == "gzip":
        data = gzip.compress(raw, mtime=0)
    elif compression == "zstd":
        data = zstandard.ZstdCompressor().compress(raw)
    else:
        data = raw
    return LayerBlob(LAYER_MEDIA[compression], data, sha(raw))


@dataclass
class Image:
    """An image: its layers, config and manifest blobs."""

    layers: list[LayerBlob]
    architecture: str = "amd64"
    variant: str | None = None
    history: list[dict[str, object]] = field(default_factory=list)

    @property
    def config(self) -> Blob:
        doc: dict[str, object] = {
            "architecture": self.architecture,
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": self.history
            or [
                {"created": "2024-01-02T03:04:05Z", "created_by": f"layer {i}"}
                for i in range(len(self.layers))
            ],
        }
        if self.variant:
            doc["variant"] = self.variant
        return Blob(OCI_CONFIG, json.dumps(doc, sort_keys=True).encode())

    @property
    def manifest(self) -> Blob:
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.config.descriptor(),
            "layers": [layer.descriptor() for layer in self.layers],
        }
        return Blob(OCI_MANIFEST, json.dumps(doc, sort_keys=True).encode())

    def blobs(self) -> list[Blob]:
        return [*self.layers, self.config, self.manifest]


@dataclass
class Index:
    """A multi-platform image."""

    images: list[Image]

    @property
    def manifest(self) -> Blob:
        entries = []
        for image in self.images:
            platform: dict[str, str] = {"os": "linux", "architecture": image.architecture}
            if image.variant:
                platform["variant"] = image.variant
            entries.append(image.manifest.descriptor(platform=platform))
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return Blob(OCI_INDEX, json.dumps(doc, sort_keys=True).encode())

    def blobs(self) -> list[Blob]:
        return [blob for image in self.images for blob in image.blobs()] + [self.manifest]


def write_layout(path: Path, tagged: dict[str, Image | Index]) -> Path:
    """An OCI image layout at ``path`` holding ``tagged`` (tag -> image or index)."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    manifests = []
    for tag, item in tagged.items():
        for blob in item.blobs():
            (blobs / blob.digest.split(":")[1]).write_bytes(blob.data)
        manifests.append(
            item.manifest.descriptor(annotations={"org.opencontainers.image.ref.name": tag})
        )
    (path / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    )
    return path
