"""Commit: config changes, history, manifests, and the new layer and snapshot."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from layerhub.engine.commit import apply_change, commit_config, commit_container
from layerhub.engine.digest import chain_ids, sha256_bytes
from layerhub.engine.errors import InvalidChange
from layerhub.engine.manifest import (
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    ImageManifest,
    parse_config,
    parse_manifest,
)
from layerhub.engine.store import Store
from layerhub.engine.union import UnionView

T = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "key", "value"),
    [
        ('CMD ["/bin/sh", "-c", "echo hi"]', "Cmd", ["/bin/sh", "-c", "echo hi"]),
        ("CMD echo hi", "Cmd", ["/bin/sh", "-c", "echo hi"]),
        ('ENTRYPOINT ["/app"]', "Entrypoint", ["/app"]),
        ('ENV A=1 B="two words"', "Env", ["PATH=/bin", "A=1", "B=two words"]),
        ("ENV PATH=/usr/bin", "Env", ["PATH=/usr/bin"]),
        ("ENV GREETING hello world", "Env", ["PATH=/bin", "GREETING=hello world"]),
        ("EXPOSE 80 53/udp", "ExposedPorts", {"80/tcp": {}, "53/udp": {}}),
        ('LABEL team=core "owner"="a b"', "Labels", {"team": "core", "owner": "a b"}),
        ("USER 1000:1000", "User", "1000:1000"),
        ('VOLUME ["/data", "/logs"]', "Volumes", {"/data": {}, "/logs": {}}),
        ("VOLUME /data", "Volumes", {"/data": {}}),
        ("WORKDIR app", "WorkingDir", "/srv/app"),
        ("workdir /abs", "WorkingDir", "/abs"),
    ],
)
def test_changes(change: str, key: str, value: object) -> None:
    config = {"Env": ["PATH=/bin"], "WorkingDir": "/srv"}
    apply_change(config, change)
    assert config[key] == value


@pytest.mark.parametrize(
    "change",
    [
        "RUN echo",
        "FROM x",
        "CMD",
        "CMD [not json",
        "EXPOSE 99999",
        "EXPOSE 80/icmp",
        "LABEL novalue",
        "VOLUME relative",
        "ENV 'unterminated",
        "",
    ],
)
def test_bad_changes(change: str) -> None:
    with pytest.raises(InvalidChange):
        apply_change({}, change)


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def parent_image(store: Store, media_type: str) -> tuple[ImageManifest, bytes, Path]:
    tar = layer_tar({"etc/os-release": b"ID=base\n", "etc/gone": b"bye"})
    diff_id = sha256_bytes(tar)
    blob = store.blobs.put_bytes(tar)
    snapshot = store.snapshots.unpack(diff_id, io.BytesIO(tar), diff_id=diff_id).path
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "base"}],
        }
    ).encode()
    config_desc = store.blobs.put_bytes(config)
    layer_type = DOCKER_LAYER_GZIP if media_type == DOCKER_MANIFEST else OCI_LAYER_GZIP
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": "x", "digest": config_desc.digest, "size": config_desc.size},
            "layers": [{"mediaType": layer_type, "digest": blob.digest, "size": blob.size}],
        }
    ).encode()
    parsed = parse_manifest(manifest)
    assert isinstance(parsed, ImageManifest)
    return parsed, config, snapshot


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_commit_container(tmp_path: Path, whiteout_form: str, media_type: str) -> None:
    store = Store(tmp_path / "store", whiteouts=whiteout_form)
    manifest, config, base = parent_image(store, media_type)
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/os-release").write_bytes(b"ID=child\n")
    (upper / "root").mkdir()
    (upper / "root/new").write_bytes(b"new file")
    store.whiteouts.write_whiteout(upper / "etc", "gone")
    result = commit_container(
        store,
        upper,
        store.whiteouts,
        parent_manifest=manifest,
        parent_config=config,
        created=T,
        author="Ada <ada@example.com>",
        comment="add a file",
        changes=['CMD ["/root/new"]', "ENV MODE=child"],
    )
    assert result.layer is not None
    child = parse_config(result.config_bytes)
    assert child.diff_ids == (*parse_config(config).diff_ids, result.layer.diff_id)
    assert child.history[-1] == {
        "created": "2026-01-02T03:04:05Z",
        "created_by": "layerhub commit",
        "author": "Ada <ada@example.com>",
        "comment": "add a file",
    }
    assert child.doc["config"]["Cmd"] == ["/root/new"]
    assert "MODE=child" in child.doc["config"]["Env"]
    assert child.doc["author"] == "Ada <ada@example.com>"
    assert result.manifest.media_type == media_type
    assert [d.digest for d in result.manifest.layers] == [
        *(d.digest for d in manifest.layers),
        result.layer.digest,
    ]
    for digest in (result.manifest_digest, result.config_digest, result.layer.digest):
        assert store.blobs.has(digest)
    assert result.chain_id == chain_ids(child.diff_ids)[-1]
    view = UnionView([base, store.snapshots.get(result.chain_id)], store.whiteouts)
    assert view.read_bytes("/etc/os-release") == b"ID=child\n"
    assert view.read_bytes("/root/new") == b"new file"
    assert not view.exists("/etc/gone")
    # the same changes committed again give the same layer
    again = commit_container(
        store, upper, store.whiteouts, parent_manifest=manifest, parent_config=config
    )
    assert again.layer is not None
    assert (again.layer.digest, again.layer.diff_id) == (result.layer.digest, result.layer.diff_id)


def test_empty_commit_adds_history_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", whiteouts="oci")
    manifest, config, _ = parent_image(store, OCI_MANIFEST)
    upper = tmp_path / "upper"
    upper.mkdir()
    result = commit_container(
        store,
        upper,
        store.whiteouts,
        parent_manifest=manifest,
        parent_config=config,
        changes=["LABEL a=b"],
    )
    assert result.layer is None
    assert result.chain_id is None
    child = parse_config(result.config_bytes)
    assert child.diff_ids == parse_config(config).diff_ids
    assert child.history[-1]["empty_layer"] is True
    assert child.doc["config"]["Labels"] == {"a": "b"}
    assert [d.digest for d in result.manifest.layers] == [d.digest for d in manifest.layers]


def test_bad_change_refused_before_anything_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path / "store", whiteouts="oci")
    manifest, config, _ = parent_image(store, OCI_MANIFEST)
    before = set(store.blobs.digests())
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "x").write_bytes(b"x")
    with pytest.raises(InvalidChange):
        commit_container(
            store,
            upper,
            store.whiteouts,
            parent_manifest=manifest,
            parent_config=config,
            changes=["RUN rm -rf /"],
        )
    assert set(store.blobs.digests()) == before


def test_commit_config_keeps_the_parent_untouched() -> None:
    parent = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}, "config": {}}).encode()
    child = commit_config(parent, diff_id="sha256:" + "a" * 64, created=T, created_by="x")
    assert json.loads(parent)["rootfs"]["diff_ids"] == []
    assert json.loads(child)["rootfs"]["diff_ids"] == ["sha256:" + "a" * 64]
