"""Manifests, indexes and configs: parsing, refusals and platform selection."""

from __future__ import annotations

import json

import pytest

from layerhub.engine.errors import InvalidManifest
from layerhub.engine.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    MAX_CONFIG_BYTES,
    MAX_RUN_SETTINGS_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    ImageManifest,
    Index,
    Platform,
    config_summary,
    parse_config,
    parse_manifest,
    parse_platform,
    select_platform,
)

D = ["sha256:" + c * 64 for c in "0123456789"]


def manifest(media_type: str = OCI_MANIFEST, **extra: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": D[0],
            "size": 7,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": D[1],
                "size": 10,
            },
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                "digest": D[2],
                "size": 20,
            },
        ],
    }
    doc.update(extra)
    return json.dumps(doc).encode()


def entry(digest: str, arch: str, variant: str | None = None) -> dict[str, object]:
    platform: dict[str, str] = {"os": "linux", "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": 100, "platform": platform}


def index(*entries: dict[str, object], media_type: str = OCI_INDEX) -> Index:
    parsed = parse_manifest(
        json.dumps(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": list(entries)}
        ).encode()
    )
    assert isinstance(parsed, Index)
    return parsed


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_image_manifest(media_type: str) -> None:
    parsed = parse_manifest(manifest(media_type))
    assert isinstance(parsed, ImageManifest)
    assert parsed.media_type == media_type
    assert parsed.config.digest == D[0]
    assert [layer.digest for layer in parsed.layers] == [D[1], D[2]]
    assert [layer.size for layer in parsed.layers] == [10, 20]


def test_media_type_from_the_transport_when_the_body_has_none() -> None:
    doc = json.loads(manifest())
    del doc["mediaType"]
    parsed = parse_manifest(json.dumps(doc).encode(), f"{DOCKER_MANIFEST}; charset=utf-8")
    assert parsed.media_type == DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (json.dumps({"schemaVersion": 1, "fsLayers": []}).encode(), "schema 1"),
        (manifest("application/vnd.docker.distribution.manifest.v1+prettyjws"), "schema 1"),
        (manifest("application/vnd.example.unknown+json"), "unsupported manifest media type"),
        (manifest(config={"digest": "sha256:short", "size": 1}), "not a sha256 digest"),
        (manifest(config={"digest": D[0], "size": -1}), "non-negative"),
        (manifest(config={"size": 1}), "no digest"),
        (manifest(layers="nope"), "layers list"),
        (
            manifest(layers=[{"mediaType": "application/x-foreign", "digest": D[1], "size": 1}]),
            "unsupported media type",
        ),
        (b" " * (4 * 2**20 + 1), "larger than the 4 MiB"),
        (json.dumps({"mediaType": OCI_INDEX, "manifests": {}}).encode(), "manifests list"),
    ],
)
def test_malformed_or_unsupported_manifests(data: bytes, says: str) -> None:
    with pytest.raises(InvalidManifest, match=says):
        parse_manifest(data)


def test_platform_selection() -> None:
    idx = index(
        entry(D[3], "amd64"),
        entry(D[4], "arm", "v6"),
        entry(D[5], "arm", "v7"),
        entry(D[6], "arm64", "v8"),
        media_type=DOCKER_LIST,
    )
    assert select_platform(idx, Platform()).digest == D[3]
    assert select_platform(idx, parse_platform("linux/arm64")).digest == D[6]
    assert select_platform(idx, parse_platform("linux/aarch64")).digest == D[6]
    assert select_platform(idx, parse_platform("linux/arm")).digest == D[5]
    assert select_platform(idx, parse_platform("linux/arm/v6")).digest == D[4]
    with pytest.raises(
        InvalidManifest, match=r"no image for platform linux/ppc64le .*linux/arm/v7"
    ):
        select_platform(idx, parse_platform("linux/ppc64le"))


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d"])
def test_bad_platforms(text: str) -> None:
    with pytest.raises(InvalidManifest, match="invalid platform"):
        parse_platform(text)


def test_config() -> None:
    raw = json.dumps(
        {
            "architecture": "arm64",
            "variant": "v8",
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "rootfs": {"type": "layers", "diff_ids": [D[1], D[2]]},
            "history": [{"created_by": "a"}, "junk", {"created_by": "b", "empty_layer": True}],
        }
    ).encode()
    config = parse_config(raw)
    assert config.raw == raw
    assert config.diff_ids == (D[1], D[2])
    assert str(config.platform) == "linux/arm64/v8"
    assert config.created == "2024-01-02T03:04:05Z"
    assert [h["created_by"] for h in config.history] == ["a", "b"]
    for bad, says in [
        (b"{", "not JSON"),
        (json.dumps({"rootfs": {"type": "other"}}).encode(), "rootfs"),
        (json.dumps({"rootfs": {"type": "layers"}}).encode(), "diff_ids"),
        (json.dumps({"rootfs": {"type": "layers", "diff_ids": ["x"]}}).encode(), "sha256"),
    ]:
        with pytest.raises(InvalidManifest, match=says):
            parse_config(bad)


def test_the_platform_error_names_each_offered_platform_once() -> None:
    attestation = entry(D[7], "unknown")
    attestation["platform"] = {"os": "unknown", "architecture": "unknown"}
    idx = index(entry(D[3], "amd64"), entry(D[4], "amd64"), entry(D[6], "arm64", "v8"), attestation)
    with pytest.raises(InvalidManifest) as info:
        select_platform(idx, parse_platform("linux/s390x"))
    assert str(info.value) == (
        "no image for platform linux/s390x (the image offers linux/amd64, linux/arm64/v8)"
    )


def config_doc(**run: object) -> dict[str, object]:
    return {"rootfs": {"type": "layers", "diff_ids": []}, "config": run}


def test_the_summary_keeps_run_settings_whole_and_cuts_what_pages_show() -> None:
    env = ["PATH=/bin", "BIG=" + "x" * 50_000]
    doc = config_doc(Env=env, Cmd=["sh"], Labels={"a": "b" * 10_000}, Healthcheck={"x": 1})
    doc["history"] = [{"created_by": "c" * 10_000}]
    summary = config_summary(doc)
    assert summary["config"]["Env"] == env
    assert summary["config"]["Cmd"] == ["sh"]
    assert len(summary["config"]["Labels"]["a"]) == 4096
    assert "Healthcheck" not in summary["config"]
    assert len(summary["history"][0]["created_by"]) == 4096


def test_run_settings_past_their_cap_are_refused() -> None:
    with pytest.raises(InvalidManifest, match="run settings"):
        config_summary(config_doc(Env=["X=" + "x" * (MAX_RUN_SETTINGS_BYTES + 1)]))


def test_a_config_past_the_cap_is_refused() -> None:
    doc = json.dumps(config_doc()).encode()
    raw = doc + b" " * (MAX_CONFIG_BYTES + 1 - len(doc))
    with pytest.raises(InvalidManifest, match="larger than the 8 MiB limit"):
        parse_config(raw)
    assert parse_config(doc).diff_ids == ()
