"""Manifests, indexes and image configs: OCI's and Docker's schema 2, parsed and checked.

Only what pulling, importing and pushing need: descriptors, the layer list, the config, and
platform selection in an index (``linux/amd64`` unless asked otherwise, variant included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .digest import validate_digest
from .errors import InvalidDigest, InvalidManifest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1 = (DOCKER_SCHEMA1, "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEXES = (OCI_INDEX, DOCKER_LIST)
LAYER_TYPES = (
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    DOCKER_LAYER,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
    # seen in the wild from older tools; the bytes decide the compression anyway
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
)
# what a pull asks for, best first
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
MAX_MANIFEST_BYTES = 4 * 2**20  # the distribution spec's limit for manifests
# Image configs have no limit in the spec; real ones are a few KiB (a long history, tens of
# KiB). The cap keeps a hostile config from costing memory: it is refused before download.
MAX_CONFIG_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Platform:
    """``os/architecture[/variant]``, as ``--platform`` takes it."""

    os: str = "linux"
    architecture: str = "amd64"
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm"}
# a variant-less request matches these variants first (as containerd's platform matcher does)
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def parse_platform(text: str) -> Platform:
    """Parse ``linux/amd64``, ``linux/arm64/v8``, ``linux/arm/v7``."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidManifest(f"invalid platform {text!r}: expected os/arch or os/arch/variant")
    arch = _ARCH_ALIASES.get(parts[1], parts[1])
    return Platform(parts[0], arch, parts[2] if len(parts) == 3 else None)


@dataclass(frozen=True)
class Descriptor:
    """What a manifest says about a blob or another manifest."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            plat: dict[str, str] = {
                "architecture": self.platform.architecture,
                "os": self.platform.os,
            }
            if self.platform.variant:
                plat["variant"] = self.platform.variant
            out["platform"] = plat
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ImageManifest:
    """An image manifest: one config and its layers, bottom first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class Index:
    """A manifest list or OCI index: one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]


def _descriptor(raw: Any, where: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise InvalidManifest(f"{where}: descriptor is not an object")
    try:
        digest = validate_digest(raw["digest"])
        size = raw["size"]
        media_type = raw.get("mediaType", "")
    except KeyError as exc:
        raise InvalidManifest(f"{where}: descriptor has no {exc.args[0]}") from None
    except InvalidDigest as exc:
        raise InvalidManifest(f"{where}: {exc}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifest(f"{where}: descriptor size must be a non-negative integer")
    platform = None
    plat = raw.get("platform")
    if isinstance(plat, dict) and plat.get("os") and plat.get("architecture"):
        platform = Platform(str(plat["os"]), str(plat["architecture"]), plat.get("variant"))
    annotations = raw.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise InvalidManifest(f"{where}: annotations must be an object")
    return Descriptor(str(media_type), digest, size, platform, tuple(sorted(annotations.items())))


def parse_manifest(data: bytes, content_type: str | None = None) -> ImageManifest | Index:
    """Parse a manifest or index; the ``mediaType`` field wins over a transport's header."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"manifest of {len(data)} bytes is larger than the 4 MiB limit")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidManifest(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest("manifest is not a JSON object")
    media_type = doc.get("mediaType") or (content_type or "").split(";")[0].strip()
    if not media_type:
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else ""
    if doc.get("schemaVersion") == 1 or media_type in SCHEMA1:
        raise InvalidManifest(
            "Docker schema 1 manifests are not supported (deprecated since 2017): "
            "push the image again with a current client"
        )
    if media_type in INDEXES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidManifest("index has no manifests list")
        return Index(
            media_type, tuple(_descriptor(m, f"manifests[{i}]") for i, m in enumerate(manifests))
        )
    if media_type in IMAGE_MANIFESTS:
        if "config" not in doc or not isinstance(doc.get("layers"), list):
            raise InvalidManifest("image manifest needs a config and a layers list")
        config = _descriptor(doc["config"], "config")
        layers = tuple(_descriptor(d, f"layers[{i}]") for i, d in enumerate(doc["layers"]))
        for i, layer in enumerate(layers):
            if layer.media_type not in LAYER_TYPES:
                raise InvalidManifest(
                    f"layers[{i}] has unsupported media type {layer.media_type!r}"
                )
        return ImageManifest(media_type, config, layers)
    raise InvalidManifest(f"unsupported manifest media type {media_type!r}")


def platform_matches(offered: Platform, wanted: Platform) -> bool:
    """Whether an image built for ``offered`` is what ``--platform wanted`` asks for: same os
    and architecture (aliases allowed); the variant asked for, or when none is asked, no
    variant or the architecture's default one (as containerd's matcher does)."""
    arch = _ARCH_ALIASES.get(offered.architecture, offered.architecture)
    if offered.os != wanted.os or arch != wanted.architecture:
        return False
    if wanted.variant:
        return offered.variant == wanted.variant
    return offered.variant in (None, "", _DEFAULT_VARIANT.get(wanted.architecture))


def offered_platforms(index: Index) -> list[str]:
    """The platforms an index offers, in its order, each once (attestation entries, whose
    platform is ``unknown/unknown``, are not images one can pull)."""
    seen: dict[str, None] = {}
    for d in index.manifests:
        if d.platform is not None and d.platform.os != "unknown":
            seen.setdefault(str(d.platform))
    return list(seen)


def select_platform(index: Index, wanted: Platform) -> Descriptor:
    """The index entry for ``wanted``, as ``docker pull --platform`` picks it; an error
    naming the platforms the index offers when none matches."""
    for d in index.manifests:
        if d.platform is not None and platform_matches(d.platform, wanted):
            return d
    available = ", ".join(offered_platforms(index)) or "none (its entries name no platform)"
    raise InvalidManifest(f"no image for platform {wanted} (the image offers {available})")


def check_platform(config: ImageConfig, wanted: Platform) -> None:
    """Refuse a single-platform image that is not the platform asked for, naming the one it
    offers (``docker pull --platform`` refuses it the same way)."""
    if not platform_matches(config.platform, wanted):
        raise InvalidManifest(
            f"no image for platform {wanted} (the image offers only {config.platform})"
        )


def config_too_large(size: int) -> str:
    """The message for a config past MAX_CONFIG_BYTES."""
    return (
        f"image config of {size} bytes is larger than the {MAX_CONFIG_BYTES // 2**20} MiB "
        "limit (real configs are a few KiB)"
    )


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config layerhub reads; the raw JSON is kept as it came."""

    raw: bytes
    doc: dict[str, Any]
    diff_ids: tuple[str, ...]
    platform: Platform
    created: str | None

    @property
    def summary(self) -> dict[str, Any]:
        """What the catalog's row keeps (see config_summary)."""
        return config_summary(self.doc)

    @property
    def history(self) -> list[dict[str, Any]]:
        """``docker history`` entries, oldest first."""
        history = self.doc.get("history") or []
        return [h for h in history if isinstance(h, dict)]


# What the catalog keeps of a config in its database row (the config itself stays in the
# blob store): the run settings whole, since running a container needs them exactly, within a
# cap; what pages show (labels, ports, volumes, history), each bounded and cut if longer.
RUN_FIELDS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "StopSignal")
SHOWN_FIELDS = ("Labels", "ExposedPorts", "Volumes")
MAX_RUN_SETTINGS_BYTES = 256 * 1024
MAX_SHOWN_ITEMS = 256
MAX_HISTORY_ENTRIES = 1000
MAX_TEXT = 4096
_CUT = "…"


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + _CUT


def _shown(value: Any) -> dict[str, str] | None:
    """A map field (Labels, ExposedPorts, Volumes), bounded: at most MAX_SHOWN_ITEMS keys,
    keys and values cut at 256 and MAX_TEXT characters."""
    if not isinstance(value, dict):
        return None
    items = list(value.items())[:MAX_SHOWN_ITEMS]
    return {
        _text(k, 256): _text(v) if isinstance(v, str) else ("" if isinstance(v, dict) else _text(v))
        for k, v in items
    }


def _bounded_history(history: Any) -> list[dict[str, Any]]:
    """At most MAX_HISTORY_ENTRIES entries, in order: every entry that made a layer first
    (``docker history`` matches them with the layers), then the earliest empty ones."""
    entries = [e for e in (history if isinstance(history, list) else []) if isinstance(e, dict)]
    if len(entries) <= MAX_HISTORY_ENTRIES:
        return entries
    layered = [i for i, e in enumerate(entries) if not e.get("empty_layer")]
    keep = set(layered[:MAX_HISTORY_ENTRIES])
    for i in range(len(entries)):
        if len(keep) >= MAX_HISTORY_ENTRIES:
            break
        keep.add(i)
    return [e for i, e in enumerate(entries) if i in keep]


def config_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """What the catalog keeps of an image config: ``{"config": run settings and shown
    fields, "history": entries, "rootfs", "created", "author"}`` (Docker's key names), bounded in
    size whatever the config holds. Raises InvalidManifest if the run settings alone pass
    MAX_RUN_SETTINGS_BYTES: cutting them would run a different command or environment."""
    run = doc.get("config")
    run = run if isinstance(run, dict) else {}
    settings: dict[str, Any] = {k: run[k] for k in RUN_FIELDS if run.get(k) is not None}
    size = len(json.dumps(settings, ensure_ascii=False).encode())
    if size > MAX_RUN_SETTINGS_BYTES:
        raise InvalidManifest(
            f"image config's run settings ({', '.join(settings)}) take {size} bytes, more "
            f"than the {MAX_RUN_SETTINGS_BYTES // 1024} KiB limit"
        )
    for key in SHOWN_FIELDS:
        shown = _shown(run.get(key))
        if shown is not None:
            settings[key] = shown
    entries = []
    for entry in _bounded_history(doc.get("history")):
        item: dict[str, Any] = {"created": _text(entry.get("created"), 64)}
        for key in ("created_by", "comment", "author"):
            if entry.get(key):
                item[key] = _text(entry[key])
        if entry.get("empty_layer"):
            item["empty_layer"] = True
        entries.append(item)
    summary: dict[str, Any] = {"config": settings, "history": entries}
    rootfs = doc.get("rootfs")
    if isinstance(rootfs, dict) and isinstance(rootfs.get("diff_ids"), list):
        # one per layer, as bounded as the image's layer rows
        diff_ids = [d for d in rootfs["diff_ids"] if isinstance(d, str) and len(d) <= 80]
        summary["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    for key in ("created", "author"):
        if isinstance(doc.get(key), str):
            summary[key] = _text(doc[key], 256)
    return summary


def parse_config(raw: bytes) -> ImageConfig:
    """Parse an image config (at most MAX_CONFIG_BYTES) and check its rootfs."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidManifest(config_too_large(len(raw)))
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidManifest(f"image config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest("image config is not a JSON object")
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise InvalidManifest("image config has no rootfs of type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise InvalidManifest("image config has no rootfs.diff_ids list")
    try:
        checked = tuple(validate_digest(d) for d in diff_ids)
    except InvalidDigest as exc:
        raise InvalidManifest(f"image config: {exc}") from None
    platform = Platform(
        str(doc.get("os") or "linux"),
        str(doc.get("architecture") or "amd64"),
        doc.get("variant"),
    )
    created = doc.get("created")
    return ImageConfig(raw, doc, checked, platform, created if isinstance(created, str) else None)
