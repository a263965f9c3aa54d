"""Push and export, checked by real peers: the CNCF registry takes the pushes, skopeo reads
back what was pushed and what was exported, umoci unpacks it, and layerhub's own importer
reads the archives. Pure engine tests: no database."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from layerhub.engine.archive import import_archive
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import DigestMismatch, RegistryAuthError, RegistryError
from layerhub.engine.export import ExportImage, write_docker_archive, write_oci_layout
from layerhub.engine.manifest import DOCKER_MANIFEST, Descriptor
from layerhub.engine.pull import pull
from layerhub.engine.push import push_image
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import Credentials, RegistryClient
from layerhub.engine.store import Store
from tests.registry.conftest import Seed
from tests.registry.conftest import _seeded as seeded_registry
from tests.support.blobs import corrupt_blob
from tests.support.peers import require_peer
from tests.support.registry import SKOPEO_BIN, Registry, free_port
from tests.support.seaweedfs import SeaweedFS, s3_store

# -- helpers -------------------------------------------------------------------------------------


StoreMaker = Callable[[Path], Store]


@dataclass
class Pulled:
    store: Store
    image: ExportImage
    # makes another store whose blobs live where this one's do (local, or the object store)
    new_store: StoreMaker

    @property
    def blobs(self) -> list[Descriptor]:
        return [self.image.config, *self.image.layers]


def client_for(registry: Registry | str, *, login: bool = True) -> RegistryClient:
    if isinstance(registry, str):
        return RegistryClient(registry, backoff=0.01)
    creds = None
    if login and registry.username:
        creds = Credentials(registry.username, registry.password or "")
    return RegistryClient(registry.host, credentials=creds, backoff=0.01)


def pull_into(store_root: Path, registry: Registry, name: str, new_store: StoreMaker) -> Pulled:
    store = new_store(store_root)
    ref = parse_reference(f"{registry.host}/{name}")
    with client_for(registry) as client:
        image = pull(client, ref, store, unpack=False)
    return Pulled(store, ExportImage.load(store, image.manifest_digest, [str(ref)]), new_store)


Line = tuple[str, str, int, int]


class Recorder:
    """Progress lines as ``docker push`` would print them, kept in order."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self.lock = threading.Lock()

    def __call__(self, digest: str, status: str, current: int, total: int) -> None:
        with self.lock:
            self.lines.append((digest, status, current, total))

    def statuses(self, digest: str) -> list[str]:
        return [status for d, status, _, _ in self.lines if d == digest]

    def final(self) -> dict[str, str]:
        return {d: status for d, status, _, _ in self.lines}


def push(
    client: RegistryClient, pulled: Pulled, repository: str, tag: str, **kwargs: Any
) -> tuple[str, Recorder]:
    progress = Recorder()
    digest = push_image(
        client,
        repository,
        tag,
        pulled.image.manifest_bytes,
        pulled.image.media_type,
        pulled.blobs,
        pulled.store,
        progress=progress,
        **kwargs,
    )
    return digest, progress


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert SKOPEO_BIN is not None
    return subprocess.run(
        [SKOPEO_BIN, *args], check=check, capture_output=True, text=True, timeout=120
    )


def creds_args(registry: Registry) -> list[str]:
    return ["--creds", f"{registry.username}:{registry.password}"] if registry.username else []


def inspect_remote(registry: Registry, name: str, *extra: str) -> Any:
    args = ["inspect", "--tls-verify=false", *creds_args(registry), *extra]
    out = skopeo(*args, f"docker://{registry.host}/{name}").stdout
    return out if "--raw" in extra else json.loads(out)


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> Path:
    umoci = require_peer("umoci")
    subprocess.run(
        [umoci, "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return bundle / "rootfs"


def assert_app_rootfs(rootfs: Path) -> None:
    """The union of the seed's base and app layers: the app layer's whiteout and opaque dir
    applied."""
    assert (rootfs / "app/run").read_bytes() == b"#!/bin/sh\necho app\n"
    assert (rootfs / "etc/os-release").read_bytes() == b"ID=layerhub-test\n"
    assert not (rootfs / "etc/motd").exists()
    assert sorted(p.name for p in (rootfs / "opt/old").iterdir()) == ["b"]
    assert (rootfs / "usr/lib/libbig.so").stat().st_size == 400_000


def layer_digests(pulled: Pulled) -> list[str]:
    return [layer.digest for layer in pulled.image.layers]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["local", "s3"])
def new_store(request: pytest.FixtureRequest) -> StoreMaker:
    """Stores with blobs in their own blobs/, then in the object store (SeaweedFS)."""
    if request.param == "local":
        return Store
    server: SeaweedFS = request.getfixturevalue("seaweedfs")
    bucket = server.bucket()
    return lambda root: s3_store(root, server, bucket)


@pytest.fixture(scope="module")
def registry(
    new_store: StoreMaker, tmp_path_factory: pytest.TempPathFactory, seed: Seed
) -> Iterator[Registry]:
    """A registry of each blob store's own (the pushes of one never meet the other's)."""
    yield from seeded_registry(tmp_path_factory.mktemp("registry"), seed, "none")


@pytest.fixture(scope="module")
def app(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory, new_store: StoreMaker
) -> Pulled:
    """team/app:v1 (a gzip base layer and a zstd layer) pulled into a store of its own."""
    return pull_into(tmp_path_factory.mktemp("store-app"), registry, "team/app:v1", new_store)


@pytest.fixture(scope="module")
def two(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory, new_store: StoreMaker
) -> tuple[Pulled, Pulled]:
    """team/app:v1 and team/other:other pulled into one store: they share the base layer."""
    root = tmp_path_factory.mktemp("store-two")
    first = pull_into(root, registry, "team/app:v1", new_store)
    # the same store (and blobs) again, as a second pull into it sees them
    return first, pull_into(root, registry, "team/other:other", lambda _: first.store)


class PushFront:
    """A front for a registry that forwards every request (the Host header kept, so upload
    Locations name the front), counts requests by method, can turn upload Locations into
    relative ones, and can fail some PATCH/PUT uploads with a 503 as a registry under load
    does."""

    def __init__(self, upstream: str, *, relative: bool = False) -> None:
        self.upstream = upstream
        self.relative = relative
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.methods: Counter[str] = Counter()
        self.fail_uploads = 0  # PATCH/PUT requests on upload sessions to answer 503
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.forward()

            def do_GET(self) -> None:
                self.forward()

            def do_POST(self) -> None:
                self.forward()

            def do_PATCH(self) -> None:
                self.forward()

            def do_PUT(self) -> None:
                self.forward()

            def do_DELETE(self) -> None:
                self.forward()

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with front.lock:
                    front.methods[self.command] += 1
                    fail = (
                        self.command in ("PATCH", "PUT")
                        and "/blobs/uploads/" in self.path
                        and front.fail_uploads > 0
                    )
                    if fail:
                        front.fail_uploads -= 1
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = dict(self.headers.items())
                upstream = requests.request(
                    self.command,
                    f"http://{front.upstream}{self.path}",
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    timeout=30,
                )
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() in ("connection", "transfer-encoding", "content-length"):
                        continue
                    if key.lower() == "location" and front.relative:
                        parts = urlsplit(value)
                        value = parts.path + (f"?{parts.query}" if parts.query else "")
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(upstream.content)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def front(registry: Registry) -> Iterator[PushFront]:
    f = PushFront(registry.host)
    yield f
    f.stop()


# -- push ----------------------------------------------------------------------------------------


def test_monolithic_push_is_what_skopeo_reads_back(registry: Registry, app: Pulled) -> None:
    with client_for(registry) as client:
        digest, progress = push(client, app, "team/pushed-mono", "1")
    assert digest == app.image.manifest_digest
    seen = inspect_remote(registry, "team/pushed-mono:1")
    assert seen["Digest"] == digest
    assert seen["Layers"] == layer_digests(app)
    raw = inspect_remote(registry, "team/pushed-mono:1", "--raw")
    assert raw.encode() == app.image.manifest_bytes
    config = inspect_remote(registry, "team/pushed-mono:1", "--config", "--raw")
    assert "sha256:" + hashlib.sha256(config.encode()).hexdigest() == app.image.config.digest
    # docker push's lines, per layer; the config is pushed without any
    for layer in app.image.layers:
        statuses = progress.statuses(layer.digest)
        assert statuses[:2] == ["Preparing", "Waiting"]
        assert statuses[-1] == "Pushed"
        assert set(statuses[2:-1]) == {"Pushing"}
    assert progress.statuses(app.image.config.digest) == []
    order = [status for _, status, _, _ in progress.lines]
    n = len(app.image.layers)
    # every layer is prepared, then queued, before any is pushed
    assert order[: 2 * n] == ["Preparing"] * n + ["Waiting"] * n
    assert list(app.store.tmp.iterdir()) == []


def test_chunked_push_unpacks_with_umoci(
    registry: Registry, app: Pulled, front: PushFront, tmp_path: Path
) -> None:
    base = app.image.layers[0]
    chunk = 64 * 1024
    with client_for(front.host) as client:
        digest, progress = push(client, app, "team/pushed-chunked", "1", chunk_size=chunk)
    assert digest == app.image.manifest_digest
    sizes = [b.size for b in app.blobs]
    assert front.methods["PATCH"] == sum(-(-size // chunk) for size in sizes)
    assert front.methods["PUT"] == len(sizes) + 1  # one to close each upload, one manifest
    pushing = [cur for d, s, cur, _ in progress.lines if d == base.digest and s == "Pushing"]
    assert pushing == sorted(pushing)
    assert pushing[-1] == base.size
    seen = inspect_remote(registry, "team/pushed-chunked:1")
    assert (seen["Digest"], seen["Layers"]) == (digest, layer_digests(app))
    # umoci 0.4.7 reads no tar+zstd layers: skopeo recompresses the zstd one to gzip on copy
    layout = tmp_path / "layout"
    skopeo(
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-compress-format=gzip",
        f"docker://{registry.host}/team/pushed-chunked:1",
        f"oci:{layout}:x",
    )
    assert_app_rootfs(umoci_unpack(layout, "x", tmp_path / "bundle"))


def test_relative_upload_locations(registry: Registry, app: Pulled) -> None:
    front = PushFront(registry.host, relative=True)
    try:
        with client_for(front.host) as client:
            mono, _ = push(client, app, "team/pushed-relative", "mono")
            chunked, _ = push(client, app, "team/pushed-relative-chunked", "1", chunk_size=50_000)
    finally:
        front.stop()
    assert mono == chunked == app.image.manifest_digest
    assert inspect_remote(registry, "team/pushed-relative-chunked:1")["Digest"] == chunked


def test_second_push_finds_every_layer(registry: Registry, app: Pulled) -> None:
    with client_for(registry) as client:
        push(client, app, "team/pushed-twice", "1")
        digest, progress = push(client, app, "team/pushed-twice", "2")
    assert digest == app.image.manifest_digest
    assert progress.final() == {layer.digest: "Layer already exists" for layer in app.image.layers}
    assert all("Pushing" not in progress.statuses(layer.digest) for layer in app.image.layers)
    assert inspect_remote(registry, "team/pushed-twice:2")["Digest"] == digest


def test_cross_repository_mount(registry: Registry, app: Pulled) -> None:
    with client_for(registry) as client:
        push(client, app, "team/mount-source", "1")
        sources = {blob.digest: "team/mount-source" for blob in app.blobs}
        digest, progress = push(client, app, "team/mount-target", "1", mount_from=sources)
    assert progress.final() == {
        layer.digest: "Mounted from team/mount-source" for layer in app.image.layers
    }
    assert all("Pushing" not in progress.statuses(layer.digest) for layer in app.image.layers)
    seen = inspect_remote(registry, "team/mount-target:1")
    assert (seen["Digest"], seen["Layers"]) == (digest, layer_digests(app))


def test_mount_refused_falls_back_to_upload(registry: Registry, app: Pulled) -> None:
    # the named repository does not hold the blobs: the registry answers 202 with a session
    sources = {blob.digest: "team/nothing-here" for blob in app.blobs}
    with client_for(registry) as client:
        digest, progress = push(client, app, "team/mount-fallback", "1", mount_from=sources)
    assert progress.final() == {layer.digest: "Pushed" for layer in app.image.layers}
    assert inspect_remote(registry, "team/mount-fallback:1")["Digest"] == digest


def test_push_by_digest(registry: Registry, app: Pulled) -> None:
    digest = app.image.manifest_digest
    with client_for(registry) as client:
        assert push(client, app, "team/by-digest", digest)[0] == digest
        with pytest.raises(DigestMismatch):
            push(client, app, "team/by-digest", "sha256:" + "0" * 64)
    # a repository with no tag has no tag list: skopeo must not ask for it
    assert inspect_remote(registry, f"team/by-digest@{digest}", "--no-tags")["Digest"] == digest


def test_transient_upload_failure_starts_the_upload_over(
    registry: Registry, app: Pulled, front: PushFront
) -> None:
    front.fail_uploads = 2
    with client_for(front.host) as client:
        digest, progress = push(client, app, "team/pushed-retry", "1", concurrency=1)
    assert front.fail_uploads == 0
    assert front.methods["POST"] == len(app.blobs) + 2  # a new session for each failure
    assert progress.final() == {layer.digest: "Pushed" for layer in app.image.layers}
    assert inspect_remote(registry, "team/pushed-retry:1")["Digest"] == digest


def test_upload_failing_for_good_is_a_registry_error(
    registry: Registry, app: Pulled, front: PushFront
) -> None:
    front.fail_uploads = 1000
    with client_for(front.host) as client, pytest.raises(RegistryError, match="503"):
        push(client, app, "team/pushed-never", "1", chunk_size=100_000)
    missing = skopeo(
        "inspect",
        "--tls-verify=false",
        f"docker://{registry.host}/team/pushed-never:1",
        check=False,
    )
    assert missing.returncode != 0


def test_manifest_naming_missing_blobs_is_refused(registry: Registry, app: Pulled) -> None:
    with client_for(registry) as client, pytest.raises(RegistryError) as caught:
        push_image(
            client,
            "team/incomplete",
            "1",
            app.image.manifest_bytes,
            app.image.media_type,
            [],
            app.store,
        )
    assert not isinstance(caught.value, RegistryAuthError)
    assert "blob unknown" in str(caught.value)


def test_manifest_the_registry_finds_invalid_is_refused(registry: Registry, app: Pulled) -> None:
    # an OCI manifest sent as a Docker one: the registry answers 400 MANIFEST_INVALID
    with client_for(registry) as client, pytest.raises(RegistryError) as caught:
        push_image(
            client,
            "team/invalid",
            "1",
            app.image.manifest_bytes,
            DOCKER_MANIFEST,
            app.blobs,
            app.store,
        )
    assert not isinstance(caught.value, RegistryAuthError)
    assert "manifest invalid" in str(caught.value)


def test_corrupt_blob_in_the_store_is_refused_by_the_registry(
    registry: Registry, app: Pulled, tmp_path: Path
) -> None:
    # a store holding the image's blobs, but its config's bytes changed (same size)
    store = app.new_store(tmp_path / "store")
    for blob in app.blobs:
        if blob.digest != app.image.config.digest:
            with app.store.blobs.open(blob.digest) as f:
                store.blobs.ingest(f, blob.digest, blob.size)
    corrupt_blob(store, app.image.config.digest, bytes(app.image.config.size))
    with client_for(registry) as client, pytest.raises(RegistryError) as caught:
        push_image(
            client,
            "team/corrupt",
            "1",
            app.image.manifest_bytes,
            app.image.media_type,
            app.blobs,
            store,
        )
    assert "DIGEST_INVALID" in str(caught.value)
    remote = f"docker://{registry.host}/team/corrupt:1"
    assert skopeo("inspect", "--tls-verify=false", remote, check=False).returncode != 0


def test_push_with_basic_auth(
    basic_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pulled = pull_into(tmp_path_factory.mktemp("store-basic"), basic_registry, "team/app:v1", Store)
    with client_for(basic_registry) as client:
        digest, progress = push(client, pulled, "team/pushed-basic", "1", chunk_size=200_000)
    assert set(progress.final().values()) == {"Pushed"}
    seen = inspect_remote(basic_registry, "team/pushed-basic:1")
    assert (seen["Digest"], seen["Layers"]) == (digest, layer_digests(pulled))


def test_push_with_a_token(
    token_registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    pulled = pull_into(tmp_path_factory.mktemp("store-token"), token_registry, "team/app:v1", Store)
    server = token_registry.token_server  # type: ignore[attr-defined]
    with client_for(token_registry) as client:
        before = server.issued
        digest, _ = push(client, pulled, "team/pushed-token", "1")
        # every blob and the manifest went through with one pull,push token
        assert server.issued - before == 1
        sources = {blob.digest: "team/pushed-token" for blob in pulled.blobs}
        _, progress = push(client, pulled, "team/mounted-token", "1", mount_from=sources)
    assert set(progress.final().values()) == {"Mounted from team/pushed-token"}
    seen = inspect_remote(token_registry, "team/pushed-token:1")
    assert (seen["Digest"], seen["Layers"]) == (digest, layer_digests(pulled))
    assert inspect_remote(token_registry, "team/mounted-token:1")["Digest"] == digest


@pytest.mark.parametrize("which", ["basic_registry", "token_registry"])
def test_push_without_login_is_refused(
    which: str, request: pytest.FixtureRequest, app: Pulled
) -> None:
    target: Registry = request.getfixturevalue(which)
    with client_for(target, login=False) as client, pytest.raises(RegistryAuthError) as caught:
        push(client, app, "team/anonymous", "1")
    message = str(caught.value)
    assert f"push to {target.host}/team/anonymous was refused" in message
    assert f"log in to {target.host} first" in message


def test_push_with_wrong_password_is_refused(basic_registry: Registry, app: Pulled) -> None:
    client = RegistryClient(basic_registry.host, credentials=Credentials("tester", "wrong"))
    with client, pytest.raises(RegistryAuthError) as caught:
        push(client, app, "team/wrong-password", "1")
    assert "refused" in str(caught.value)
    assert "wrong" not in str(caught.value).replace("team/wrong-password", "")


# -- export --------------------------------------------------------------------------------------


def export(tmp_path: Path, name: str, images: list[ExportImage], store: Store, kind: str) -> Path:
    path = tmp_path / name
    with open(path, "wb") as out:
        if kind == "docker":
            write_docker_archive(out, images, store)
        else:
            write_oci_layout(out, images, store)
    return path


def test_docker_archive_is_read_by_skopeo_umoci_and_layerhub(app: Pulled, tmp_path: Path) -> None:
    archive = export(tmp_path, "app.tar", [app.image], app.store, "docker")
    image = app.image
    with tarfile.open(archive) as tf:
        names = tf.getnames()
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tf.extractfile("repositories"))  # type: ignore[arg-type]
    config_hex = image.config.digest.split(":")[1]
    layer_names = [f"{d.split(':')[1]}/layer.tar" for d in image.diff_ids]
    assert manifest == [
        {"Config": f"{config_hex}.json", "RepoTags": [image.references[0]], "Layers": layer_names}
    ]
    assert names == sorted(names)
    ref = parse_reference(image.references[0])
    assert repositories == {ref.name: {"v1": image.diff_ids[-1].split(":")[1]}}
    assert list(app.store.tmp.iterdir()) == []  # the decompressed layers are gone

    seen = json.loads(skopeo("inspect", f"docker-archive:{archive}").stdout)
    assert seen["Layers"] == list(image.diff_ids)
    raw = json.loads(skopeo("inspect", "--raw", f"docker-archive:{archive}").stdout)
    assert raw["config"]["digest"] == image.config.digest
    layout = tmp_path / "layout"
    skopeo("copy", "--quiet", f"docker-archive:{archive}", f"oci:{layout}:x")
    assert_app_rootfs(umoci_unpack(layout, "x", tmp_path / "bundle"))

    imported = import_archive(archive, app.new_store(tmp_path / "imported"))
    assert [i.config_digest for i in imported] == [image.config.digest]
    assert chain_ids(imported[0].config.diff_ids) == chain_ids(image.diff_ids)
    assert [str(r) for r in imported[0].references] == [str(ref)]


def test_oci_archive_is_read_by_skopeo_and_layerhub(app: Pulled, tmp_path: Path) -> None:
    archive = export(tmp_path, "app-oci.tar", [app.image], app.store, "oci")
    image = app.image
    with tarfile.open(archive) as tf:
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        names = tf.getnames()
    assert names == sorted(names)
    assert index["manifests"] == [
        {
            "mediaType": image.media_type,
            "digest": image.manifest_digest,
            "size": len(image.manifest_bytes),
            "annotations": {
                "io.containerd.image.name": image.references[0],
                "org.opencontainers.image.ref.name": "v1",
            },
        }
    ]
    seen = json.loads(skopeo("inspect", f"oci-archive:{archive}:v1").stdout)
    assert (seen["Digest"], seen["Layers"]) == (image.manifest_digest, layer_digests(app))
    layout = tmp_path / "layout"
    skopeo("copy", "--quiet", f"oci-archive:{archive}:v1", f"oci:{layout}:x")
    assert json.loads((layout / "index.json").read_text())["manifests"][0]["digest"] == (
        image.manifest_digest
    )
    imported = import_archive(archive, app.new_store(tmp_path / "imported"))
    assert [i.manifest_digest for i in imported] == [image.manifest_digest]
    assert imported[0].config_digest == image.config.digest
    assert chain_ids(imported[0].config.diff_ids) == chain_ids(image.diff_ids)
    # the full name comes back from io.containerd.image.name, not just the bare tag
    assert [str(r) for r in imported[0].references] == [str(parse_reference(image.references[0]))]


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_export_is_deterministic_and_shares_layers(
    kind: str, two: tuple[Pulled, Pulled], tmp_path: Path
) -> None:
    app, other = two
    images = [app.image, other.image]
    first = export(tmp_path, "a.tar", images, app.store, kind)
    second = export(tmp_path, "b.tar", images, app.store, kind)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tf:
        members = tf.getmembers()
    assert {m.mtime for m in members} == {0}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    base = app.image.layers[0]
    assert base == other.image.layers[0]
    wanted = base.digest if kind == "oci" else app.image.diff_ids[0]
    assert sum(wanted.split(":")[1] in m.name and m.isfile() for m in members) == 1
    imported = import_archive(first, app.new_store(tmp_path / "imported"))
    assert [i.config_digest for i in imported] == [
        app.image.config.digest,
        other.image.config.digest,
    ]
    if kind == "docker":
        seen = json.loads(
            skopeo("inspect", f"docker-archive:{first}:{other.image.references[0]}").stdout
        )
        assert seen["Layers"] == list(other.image.diff_ids)


def test_docker_archive_reimported_exports_the_same_bytes(app: Pulled, tmp_path: Path) -> None:
    # after an import, the store holds the layers uncompressed: their digest is their DiffID
    first = export(tmp_path, "first.tar", [app.image], app.store, "docker")
    store = app.new_store(tmp_path / "imported")
    imported = import_archive(first, store)[0]
    again = ExportImage.load(store, imported.manifest_digest, list(app.image.references))
    assert [layer.digest for layer in again.layers] == list(again.diff_ids)
    second = export(tmp_path, "second.tar", [again], store, "docker")
    assert first.read_bytes() == second.read_bytes()


def test_two_tags_of_one_image(app: Pulled, tmp_path: Path) -> None:
    tagged = ExportImage(
        ["127.0.0.1:5000/team/app:1", "debian:bookworm", f"team/app@{app.image.manifest_digest}"],
        app.image.manifest_bytes,
        app.image.media_type,
        app.image.config,
        app.image.layers,
        app.image.diff_ids,
    )
    docker = export(tmp_path, "docker.tar", [tagged, app.image], app.store, "docker")
    with tarfile.open(docker) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        repositories = json.load(tf.extractfile("repositories"))  # type: ignore[arg-type]
    top = app.image.diff_ids[-1].split(":")[1]
    assert manifest[0]["RepoTags"] == [
        "127.0.0.1:5000/team/app:1",
        "debian:bookworm",
        app.image.references[0],
    ]
    assert len(manifest) == 1
    assert repositories["debian"] == {"bookworm": top}
    assert repositories["127.0.0.1:5000/team/app"] == {"1": top}
    oci = export(tmp_path, "oci.tar", [tagged], app.store, "oci")
    with tarfile.open(oci) as tf:
        index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    assert [m["annotations"] for m in index["manifests"]] == [
        {
            "io.containerd.image.name": "127.0.0.1:5000/team/app:1",
            "org.opencontainers.image.ref.name": "1",
        },
        {
            "io.containerd.image.name": "docker.io/library/debian:bookworm",
            "org.opencontainers.image.ref.name": "bookworm",
        },
        {"io.containerd.image.name": f"docker.io/team/app@{app.image.manifest_digest}"},
    ]
    seen = json.loads(skopeo("inspect", f"oci-archive:{oci}:bookworm").stdout)
    assert seen["Digest"] == app.image.manifest_digest


def test_wrong_diff_id_fails_the_export(app: Pulled, tmp_path: Path) -> None:
    wrong = list(app.image.diff_ids)
    wrong[1] = "sha256:" + "1" * 64
    image = ExportImage(
        app.image.references,
        app.image.manifest_bytes,
        app.image.media_type,
        app.image.config,
        app.image.layers,
        wrong,
    )
    out = io.BytesIO()
    with pytest.raises(DigestMismatch, match="1111"):
        write_docker_archive(out, [image], app.store)
    assert list(app.store.tmp.iterdir()) == []
