"""Commit: a container's writable layer becomes a new layer and image, as ``docker commit``.

The writable directory is diffed into a deterministic gzip layer (diff.py), stored, and unpacked
once as the new layer's snapshot. The new config is the parent's with the layer's DiffID
appended, a history entry as Docker writes it (created, created_by, author, comment) and the
``--change`` instructions applied; an empty change adds an ``empty_layer`` history entry and no
layer. The new manifest keeps the parent's family (OCI or Docker schema 2).
"""

from __future__ import annotations

import copy
import json
import posixpath
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .apply import ApplyResult
from .diff import LayerDiff, diff_to_store
from .digest import chain_ids, sha256_bytes
from .errors import InvalidChange
from .manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from .pull import blob_lock
from .store import Descriptor as BlobDescriptor
from .store import Store
from .whiteouts import WhiteoutFormat

CHANGE_INSTRUCTIONS = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR")


def _exec_form(instruction: str, value: str) -> list[str]:
    """``["a", "b"]`` (JSON) as it is; anything else as ``/bin/sh -c value``, like Dockerfiles."""
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(p, str) for p in parsed):
            return parsed
        raise InvalidChange(f"{instruction}: not a JSON array of strings: {value}")
    return ["/bin/sh", "-c", value]


def _pairs(instruction: str, value: str) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` pairs; ``ENV k v`` (one pair, the old form) too."""
    try:
        words = shlex.split(value, posix=True)
    except ValueError as exc:
        raise InvalidChange(f"{instruction}: {exc}: {value}") from None
    if not words:
        raise InvalidChange(f"{instruction} needs at least one key=value")
    if "=" not in words[0]:
        if instruction == "ENV" and len(words) >= 2:
            return [(words[0], value.split(None, 1)[1].strip())]
        raise InvalidChange(f"{instruction}: expected key=value, got {words[0]!r}")
    pairs = []
    for word in words:
        key, sep, val = word.partition("=")
        if not sep or not key:
            raise InvalidChange(f"{instruction}: expected key=value, got {word!r}")
        pairs.append((key, val))
    return pairs


def apply_change(container_config: dict[str, Any], change: str) -> None:
    """Apply one ``--change`` instruction to an image config's ``config`` object."""
    instruction, _, value = change.strip().partition(" ")
    instruction = instruction.upper()
    value = value.strip()
    if instruction not in CHANGE_INSTRUCTIONS:
        raise InvalidChange(
            f"unsupported --change instruction {instruction or change!r}: "
            f"use one of {', '.join(CHANGE_INSTRUCTIONS)}"
        )
    if not value:
        raise InvalidChange(f"{instruction} needs a value")
    cfg = container_config
    if instruction in ("CMD", "ENTRYPOINT"):
        key = "Cmd" if instruction == "CMD" else "Entrypoint"
        cfg[key] = _exec_form(instruction, value)
    elif instruction == "ENV":
        env = list(cfg.get("Env") or [])
        for key, val in _pairs(instruction, value):
            env = [e for e in env if e.split("=", 1)[0] != key] + [f"{key}={val}"]
        cfg["Env"] = env
    elif instruction == "LABEL":
        labels = dict(cfg.get("Labels") or {})
        labels.update(_pairs(instruction, value))
        cfg["Labels"] = labels
    elif instruction == "EXPOSE":
        ports = dict(cfg.get("ExposedPorts") or {})
        for port in value.split():
            number, _, proto = port.partition("/")
            proto = proto or "tcp"
            if (
                not number.isdigit()
                or not 0 < int(number) < 65536
                or proto
                not in (
                    "tcp",
                    "udp",
                    "sctp",
                )
            ):
                raise InvalidChange(f"EXPOSE: invalid port {port!r}")
            ports[f"{int(number)}/{proto}"] = {}
        cfg["ExposedPorts"] = ports
    elif instruction == "USER":
        cfg["User"] = value
    elif instruction == "VOLUME":
        paths = _exec_form(instruction, value) if value.startswith("[") else value.split()
        volumes = dict(cfg.get("Volumes") or {})
        for path in paths:
            if not path.startswith("/"):
                raise InvalidChange(f"VOLUME: {path!r} is not an absolute path")
            volumes[path] = {}
        cfg["Volumes"] = volumes
    elif instruction == "WORKDIR":
        cfg["WorkingDir"] = posixpath.normpath(posixpath.join(cfg.get("WorkingDir") or "/", value))


def rfc3339(moment: datetime) -> str:
    """A time as image configs write it: ``2024-01-02T03:04:05.123456Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def commit_config(
    parent: bytes,
    *,
    diff_id: str | None,
    created: datetime,
    created_by: str,
    author: str = "",
    comment: str = "",
    changes: Sequence[str] = (),
) -> bytes:
    """The child image's config JSON: parent + layer + history entry + changes."""
    doc = json.loads(parent)
    parse_config(parent)  # the parent must be a valid image config
    child: dict[str, Any] = copy.deepcopy(doc)
    container_config = child.setdefault("config", {}) or {}
    child["config"] = container_config
    for change in changes:
        apply_change(container_config, change)
    stamp = rfc3339(created)
    child["created"] = stamp
    if author:
        child["author"] = author
    else:
        child.pop("author", None)
    entry: dict[str, Any] = {"created": stamp, "created_by": created_by}
    if author:
        entry["author"] = author
    if comment:
        entry["comment"] = comment
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        child["rootfs"]["diff_ids"] = [*doc["rootfs"]["diff_ids"], diff_id]
    child["history"] = [*(doc.get("history") or []), entry]
    return json.dumps(child, separators=(",", ":")).encode()


def commit_manifest(
    parent: ImageManifest, config: Descriptor, layer: Descriptor | None
) -> tuple[bytes, str]:
    """The child manifest (and its media type), in the parent's family."""
    docker = parent.media_type == DOCKER_MANIFEST
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    config = Descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config.digest, config.size)
    layers = list(parent.layers)
    if layer is not None:
        layers.append(
            Descriptor(DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, layer.digest, layer.size)
        )
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_json(),
        "layers": [d.to_json() for d in layers],
    }
    return json.dumps(doc, indent=3).encode(), media_type


@dataclass(frozen=True)
class CommitResult:
    """The new image, stored: its manifest and config, and its new layer if there is one."""

    manifest_digest: str
    manifest_bytes: bytes
    manifest: ImageManifest
    config_digest: str
    config_bytes: bytes
    layer: LayerDiff | None
    chain_id: str | None  # the new layer's snapshot
    unpacked: ApplyResult | None  # what unpacking it found (None if the snapshot existed)


def upper_is_empty(upper: Path) -> bool:
    """Whether a writable directory holds no change at all."""
    return not upper.exists() or not any(upper.iterdir())


def _put(
    store: Store, data: bytes, lease: Callable[[Sequence[str]], None] | None
) -> BlobDescriptor:
    """Store a small blob, leased first and written under its lock (where deletes look)."""
    digest = sha256_bytes(data)
    if lease is not None:
        lease([digest])
    with blob_lock(store, digest):
        return store.blobs.put_bytes(data, digest)


def commit_container(
    store: Store,
    upper: Path,
    whiteouts: WhiteoutFormat,
    *,
    parent_manifest: ImageManifest,
    parent_config: bytes,
    created: datetime | None = None,
    created_by: str = "layerhub commit",
    author: str = "",
    comment: str = "",
    changes: Sequence[str] = (),
    lease: Callable[[Sequence[str]], None] | None = None,
) -> CommitResult:
    """Commit the writable directory ``upper`` over the parent image into the store.

    Blobs are written first (layer, config, then manifest) and the layer is unpacked as its
    snapshot before anything names it: a crash leaves at most unreferenced blobs, never a
    manifest without its blobs. ``upper`` itself is left as it is. ``lease``, if given, is
    called with each blob digest and the new ChainID before they are relied on (see pull.py):
    a layer found stored already (the same change committed before) is checked again, under
    its lock, once leased.
    """
    moment = created or datetime.now(UTC)
    for change in changes:  # refuse bad instructions before any work
        apply_change({}, change)
    layer = None if upper_is_empty(upper) else diff_to_store(upper, whiteouts, store.blobs)
    if layer is not None and lease is not None:
        parent_diff_ids = parse_config(parent_config).diff_ids
        lease([layer.digest, chain_ids([*parent_diff_ids, layer.diff_id])[-1]])
        with blob_lock(store, layer.digest):
            missing = not store.blobs.has(layer.digest)
        if missing:  # deleted between the diff and the lease: store it again
            layer = diff_to_store(upper, whiteouts, store.blobs)
    config_bytes = commit_config(
        parent_config,
        diff_id=layer.diff_id if layer else None,
        created=moment,
        created_by=created_by,
        author=author,
        comment=comment,
        changes=changes,
    )
    config_desc = _put(store, config_bytes, lease)
    chain_id = None
    unpacked = None
    if layer is not None:
        chain_id = chain_ids(parse_config(config_bytes).diff_ids)[-1]
        with store.blobs.open(layer.digest) as blob:
            unpacked = store.snapshots.unpack(chain_id, blob, diff_id=layer.diff_id).applied
    layer_desc = Descriptor(OCI_LAYER_GZIP, layer.digest, layer.size) if layer else None
    manifest_bytes, _ = commit_manifest(
        parent_manifest, Descriptor(OCI_CONFIG, config_desc.digest, config_desc.size), layer_desc
    )
    manifest_digest = _put(store, manifest_bytes, lease).digest
    manifest = parse_manifest(manifest_bytes)
    assert isinstance(manifest, ImageManifest)
    return CommitResult(
        manifest_digest,
        manifest_bytes,
        manifest,
        config_desc.digest,
        config_bytes,
        layer,
        chain_id,
        unpacked,
    )
