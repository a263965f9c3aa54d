"""The registry client against hostile registries: scripted loopback servers that redirect to
a host asking for a login, send endless or trickled bodies, ignore Range requests or stall.
Pure engine tests (no database); every timing is a client parameter, so each takes seconds."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerhub.engine.errors import (
    InvalidManifest,
    RegistryAuthError,
    RegistryError,
    RegistryTimeout,
    RegistryUnavailable,
)
from layerhub.engine.manifest import MAX_CONFIG_BYTES, OCI_MANIFEST, parse_platform
from layerhub.engine.pull import resolve
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import Credentials, RegistryClient
from layerhub.engine.store import Store
from tests.support.hostile import Request, Server, endless, serve, sha256
from tests.support.oci import Image, make_layer

LOGIN = Credentials("alice", "registry-password")
BLOB = random.Random(7).randbytes(200_000)
BLOB_DIGEST = sha256(BLOB)
BIG = 64 * 2**20  # what an "endless" body would send if it were read to its end


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def client(server: Server, **kwargs: object) -> RegistryClient:
    options: dict[str, object] = {"backoff": 0.001, "retries": 2, "timeout": 5.0}
    options.update(kwargs)
    return RegistryClient(server.host, **options)  # type: ignore[arg-type]


def tmp_is_empty(store: Store) -> bool:
    return not any(store.tmp.iterdir())


def bearer(realm: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="{realm}",service="storage"'}


# -- 8: credentials stay with their registry -------------------------------------------------


@pytest.fixture
def storage() -> Iterator[Server]:
    """A storage host that asks every visitor for a login and hands out tokens for it."""

    def answer(req: Request) -> None:
        if req.path.startswith("/token"):
            req.send_json(200, {"token": "storage-token", "expires_in": 300})
        elif req.method == "DELETE":
            req.send(204)
        else:
            req.send(401, b"", bearer(f"{storage_server.url}/token"))

    with serve(answer) as storage_server:
        yield storage_server


def test_a_redirected_blob_challenge_gets_neither_login_nor_token(
    storage: Server, store: Store
) -> None:
    def registry(req: Request) -> None:  # public repository: no challenge of its own
        req.send(307, b"", {"Location": f"{storage.url}/blob?signed=1"})

    with (
        serve(registry) as reg,
        client(reg, credentials=LOGIN) as c,
        pytest.raises(RegistryAuthError, match="not sent to another host"),
    ):
        c.fetch_blob("team/app", BLOB_DIGEST, len(BLOB), store.blobs)
    assert storage.authorizations() == []
    assert not any(s.path.startswith("/token") for s in storage.seen)
    assert tmp_is_empty(store)


def test_a_redirect_on_the_registry_itself_keeps_the_login(store: Store) -> None:
    def registry(req: Request) -> None:
        if req.headers.get("Authorization") != LOGIN_BASIC:
            req.send(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
        elif req.path.startswith("/v2/team/app/blobs/"):
            req.send(302, b"", {"Location": "/storage/blob"})
        else:
            req.send(200, BLOB)

    with serve(registry) as reg, client(reg, credentials=LOGIN) as c:
        c.fetch_blob("team/app", BLOB_DIGEST, len(BLOB), store.blobs)
    assert store.blobs.read_bytes(BLOB_DIGEST) == BLOB


LOGIN_BASIC = "Basic YWxpY2U6cmVnaXN0cnktcGFzc3dvcmQ="  # alice:registry-password


def test_an_upload_sent_to_another_host_gets_no_login(storage: Server, store: Store) -> None:
    store.blobs.put_bytes(BLOB)

    def registry(req: Request) -> None:
        if req.headers.get("Authorization") != LOGIN_BASIC:
            req.send(401, b"", {"WWW-Authenticate": 'Basic realm="r"'})
        else:
            req.send(202, b"", {"Location": f"{storage.url}/upload/1?state=x"})

    with serve(registry) as reg, client(reg, credentials=LOGIN) as c:
        upload = c.start_upload("team/app")
        with pytest.raises(RegistryAuthError):
            c.push_blob(upload, store.blobs, BLOB_DIGEST)
        c.cancel_upload(upload)
    assert [s.method for s in storage.seen] == ["PUT", "DELETE"]
    assert storage.authorizations() == []


# -- 9: every body is bounded ----------------------------------------------------------------


def test_an_endless_error_body_is_cut(store: Store) -> None:
    def registry(req: Request) -> None:
        req.stream(400, endless(limit=BIG), {"Content-Type": "application/json"})

    with (
        serve(registry) as reg,
        client(reg) as c,
        pytest.raises(RegistryError, match="HTTP 400"),
    ):
        c.get_manifest("team/app", "v1")
    # what the client read, plus what socket buffers took before it hung up
    assert reg.sent < BIG // 4


def test_an_endless_token_body_is_cut() -> None:
    def registry(req: Request) -> None:
        if req.path.startswith("/token"):
            req.stream(200, endless(b'{"token": "' + b"x" * 65525, limit=BIG))
        else:
            req.send(401, b"", bearer(f"{reg.url}/token"))

    with (
        serve(registry) as reg,
        client(reg, credentials=LOGIN) as c,
        pytest.raises(RegistryAuthError, match="token service sent more than"),
    ):
        c.get_manifest("team/app", "v1")
    assert reg.sent < BIG // 4


def image_registry(manifest: bytes, blobs: dict[str, bytes]) -> Callable[[Request], None]:
    """An honest registry holding one image, tagged v1."""

    def answer(req: Request) -> None:
        if "/manifests/" in req.path:
            req.send(200, manifest, {"Content-Type": OCI_MANIFEST})
        elif "/blobs/" in req.path and req.path.rsplit("/", 1)[1] in blobs:
            req.send(200, blobs[req.path.rsplit("/", 1)[1]])
        else:
            req.send(404)

    return answer


def test_a_config_over_the_cap_is_refused_before_download(store: Store) -> None:
    config = b" " * (MAX_CONFIG_BYTES + 1)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    with (
        serve(image_registry(manifest, {sha256(config): config})) as reg,
        client(reg) as c,
        pytest.raises(InvalidManifest, match="larger than the 8 MiB limit"),
    ):
        resolve(c, parse_reference(f"{reg.host}/team/app:v1"), store)
    assert [s for s in reg.seen if "/blobs/" in s.path] == []
    assert not store.blobs.has(sha256(config))


# -- 10: bounded retries, bounded time -------------------------------------------------------


def test_a_registry_ignoring_range_again_and_again_fails_typed(store: Store) -> None:
    def registry(req: Request) -> None:  # every answer, Range or not: a short, whole 200
        half = BLOB[: len(BLOB) // 2]
        req.send(200, half)

    with (
        serve(registry) as reg,
        client(reg, retries=3) as c,
        pytest.raises(RegistryUnavailable, match=r"ignores Range|kept failing"),
    ):
        c.fetch_blob("team/app", BLOB_DIGEST, len(BLOB), store.blobs)
    assert 2 <= len(reg.seen) <= 8  # the budget is per blob: a handful of requests
    assert tmp_is_empty(store)
    assert not store.blobs.has(BLOB_DIGEST)


def test_a_trickled_manifest_ends_at_the_deadline() -> None:
    def registry(req: Request) -> None:
        req.stream(200, [b"{"] * 1000, {"Content-Type": OCI_MANIFEST}, length=1000, pause=0.2)

    with serve(registry) as reg, client(reg, deadline=1.0) as c:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match="did not arrive within 1 s"):
            c.get_manifest("team/app", "v1")
        assert time.monotonic() - started < 3


def test_trickled_headers_end_at_the_deadline() -> None:
    def registry(req: Request) -> None:
        req.trickle_headers(200, {"Content-Type": OCI_MANIFEST, "Content-Length": "2"}, 0.2)

    with serve(registry) as reg, client(reg, deadline=1.0) as c:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match="within 1 s"):
            c.get_manifest("team/app", "v1")
        assert time.monotonic() - started < 3


def test_a_stalled_blob_fails_after_the_stall_period(store: Store) -> None:
    def stall_after_half() -> Iterator[bytes]:
        yield BLOB[: len(BLOB) // 2]
        time.sleep(5)
        yield b""

    def registry(req: Request) -> None:
        req.stream(200, stall_after_half(), length=len(BLOB))

    with serve(registry) as reg, client(reg, stall_timeout=0.3, retries=1) as c:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match=r"no data for 0\.3 s"):
            c.fetch_blob("team/app", BLOB_DIGEST, len(BLOB), store.blobs)
        assert time.monotonic() - started < 4
    assert tmp_is_empty(store)


def test_a_slow_blob_that_keeps_moving_is_not_a_stall(store: Store) -> None:
    pieces = [BLOB[i : i + 20_000] for i in range(0, len(BLOB), 20_000)]

    def registry(req: Request) -> None:
        req.stream(200, pieces, length=len(BLOB), pause=0.1)

    # a second of transfer, past the deadline for small documents, never 0.5 s without bytes
    with serve(registry) as reg, client(reg, stall_timeout=0.5, deadline=0.5) as c:
        c.fetch_blob("team/app", BLOB_DIGEST, len(BLOB), store.blobs)
    assert store.blobs.read_bytes(BLOB_DIGEST) == BLOB


# -- 23: --platform the image does not offer ---------------------------------------------------


def test_a_single_platform_image_is_not_taken_for_another_platform(store: Store) -> None:
    layer = make_layer({"etc": None, "etc/hostname": b"amd\n"})
    image = Image([layer])
    blobs = {layer.digest: layer.data, image.config.digest: image.config.data}
    with serve(image_registry(image.manifest.data, blobs)) as reg, client(reg) as c:
        ref = parse_reference(f"{reg.host}/team/app:v1")
        with pytest.raises(
            InvalidManifest, match=r"linux/arm64 \(the image offers only linux/amd64"
        ):
            resolve(c, ref, store, parse_platform("linux/arm64"))
        assert resolve(c, ref, store, parse_platform("linux/amd64")).config_digest == (
            image.config.digest
        )
        assert resolve(c, ref, store).config_digest == image.config.digest


def test_a_trickled_config_ends_at_the_deadline(store: Store) -> None:
    layer = make_layer({"etc": None})
    image = Image([layer])
    config = image.config

    def registry(req: Request) -> None:
        if "/manifests/" in req.path:
            req.send(200, image.manifest.data, {"Content-Type": OCI_MANIFEST})
        else:  # the config, 2 KiB a second: a stall timeout alone would never end it
            pieces = [config.data[i : i + 2048] for i in range(0, config.size, 2048)]
            req.stream(200, [b"", *pieces], length=config.size, pause=1.0)

    with serve(registry) as reg, client(reg, deadline=1.0, stall_timeout=30.0) as c:
        started = time.monotonic()
        with pytest.raises(RegistryTimeout, match="did not arrive within 1 s"):
            resolve(c, parse_reference(f"{reg.host}/team/app:v1"), store)
        assert time.monotonic() - started < 3
    assert not store.blobs.has(config.digest)
    assert tmp_is_empty(store)
