"""Registries as they are in the wild: the CNCF registry serving TLS on loopback with
certificates the tests make (a private CA, a certificate for another name, an expired one,
client certificates required), mirrors that lack things or are down, and a CONNECT proxy.
The engine is driven directly (no database), except where settings are the point."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pytest_django import Settings

from layerhub.engine.errors import RegistryTLSError
from layerhub.engine.pull import ResolvedImage, pull
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import (
    Credentials,
    Mirror,
    ProxyConfig,
    RegistryClient,
    TLSConfig,
)
from layerhub.engine.store import Store
from tests.registry.conftest import Seed
from tests.support.certs import CA, Issued, certs_d
from tests.support.connect_proxy import ConnectProxy, connect_proxy
from tests.support.hostile import Request, serve
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry, free_port, run_registry
from tests.support.teams import default_team

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Pki:
    """The test CA and what it issued."""

    ca: CA
    server: Issued  # 127.0.0.1, localhost, registry.test
    wrong_name: Issued  # other.example
    expired: Issued  # 127.0.0.1, ended yesterday
    client: Issued  # a client certificate


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CA(tmp_path_factory.mktemp("pki"))
    return Pki(
        ca,
        ca.issue("server", ["127.0.0.1", "localhost", "registry.test"]),
        ca.issue("wrong-name", ["other.example"]),
        ca.issue("expired", ["127.0.0.1"], expired=True),
        ca.issue("client", ["layerhub-client"], client=True),
    )


def _tls_registry(
    factory: pytest.TempPathFactory, seeded: Registry, cert: Issued, client_ca: Path | None = None
) -> Iterator[Registry]:
    # serves the seeded registry's storage: the same images, no push needed
    with run_registry(
        factory.mktemp("tls-registry"),
        storage=seeded.storage,
        tls=(cert.cert, cert.key),
        client_ca=client_ca,
    ) as served:
        yield served


@pytest.fixture(scope="session")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, pki: Pki
) -> Iterator[Registry]:
    """The seeded images over HTTPS only, with a certificate from the private CA."""
    yield from _tls_registry(tmp_path_factory, registry, pki.server)


@pytest.fixture(scope="session")
def mtls_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, pki: Pki
) -> Iterator[Registry]:
    """As tls_registry, requiring a client certificate signed by the private CA."""
    yield from _tls_registry(tmp_path_factory, registry, pki.server, pki.ca.pem)


@pytest.fixture(scope="session")
def wrong_name_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, pki: Pki
) -> Iterator[Registry]:
    yield from _tls_registry(tmp_path_factory, registry, pki.wrong_name)


@pytest.fixture(scope="session")
def expired_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, pki: Pki
) -> Iterator[Registry]:
    yield from _tls_registry(tmp_path_factory, registry, pki.expired)


@pytest.fixture(scope="session")
def mirror_registry(tmp_path_factory: pytest.TempPathFactory, seed: Seed) -> Iterator[Registry]:
    """A mirror holding team/app:v1 only (it lacks team/other)."""
    with run_registry(tmp_path_factory.mktemp("mirror")) as mirror:
        mirror.push_layout(seed.layout, "v1", "team/app")
        yield mirror


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Names that resolve to 127.0.0.1 in this process (a hosts file for the test): a
    registry that is not loopback by name, so proxies and HTTPS rules apply to it."""
    names: set[str] = set()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host in names else host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names.add


@pytest.fixture
def proxy_server() -> Iterator[ConnectProxy]:
    with connect_proxy() as proxy:
        yield proxy


def client_for(host: str, certs: Path | None = None, **kwargs: Any) -> RegistryClient:
    options: dict[str, Any] = {
        "backoff": 0.01,
        "retries": 1,
        "timeout": 10.0,
        "tls": TLSConfig(certs),
        "proxies": ProxyConfig(),  # the test's own, whatever this machine's environment says
    }
    options.update(kwargs)
    return RegistryClient(host, **options)


def pull_app(client: RegistryClient, tmp_path: Path, name: str = "team/app:v1") -> ResolvedImage:
    store = Store(tmp_path / f"store-{time.monotonic_ns()}")
    return pull(client, parse_reference(f"{client.host}/{name}"), store)


# -- trust -------------------------------------------------------------------------------------


def test_a_private_ca_in_certs_d_pulls_over_https(
    tls_registry: Registry, pki: Pki, seed: Seed, tmp_path: Path
) -> None:
    certs = certs_d(tmp_path / "certs.d", tls_registry.host, ca=pki.ca)
    with client_for(tls_registry.host, certs) as client:
        image = pull_app(client, tmp_path)
        assert client.base == f"https://{tls_registry.host}"
    assert image.manifest_digest == seed.app_image.manifest.digest


def test_an_unknown_ca_is_refused_naming_the_host_and_what_to_do(
    tls_registry: Registry, tmp_path: Path
) -> None:
    with (
        client_for(tls_registry.host, tmp_path / "certs.d") as client,
        pytest.raises(RegistryTLSError) as caught,
    ):
        pull_app(client, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tls_registry.host}: TLS certificate refused: ")
    assert "signed by an unknown authority ('layerhub test CA')" in message
    assert str(tmp_path / "certs.d" / tls_registry.host / "ca.crt") in message


CHILD_PULL = """
import sys
from pathlib import Path
from layerhub.engine.errors import LayerhubError
from layerhub.engine.pull import pull
from layerhub.engine.reference import parse_reference
from layerhub.engine.registry import RegistryClient
from layerhub.engine.store import Store
ref = parse_reference(sys.argv[1])
try:
    with RegistryClient(ref.api_host, retries=0) as client:
        image = pull(client, ref, Store(Path(sys.argv[2])))
        print(client.base, image.manifest_digest)
except LayerhubError as exc:
    sys.exit(str(exc))
"""


def child_pull(reference: str, store: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Pull in a fresh process with no setting at all but ``env`` (no proxy, no certs dir)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if k.upper() not in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE")
    }
    return subprocess.run(
        [sys.executable, "-c", CHILD_PULL, reference, str(store)],
        cwd=PROJECT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_os_trust_store_is_used_and_loopback_tls_needs_no_setting(
    tls_registry: Registry, pki: Pki, seed: Seed, tmp_path: Path
) -> None:
    """The trust store of the machine, as OpenSSL finds it (SSL_CERT_FILE here: the
    machine's own store is never changed), and a TLS registry on loopback with no setting:
    it is pulled from over HTTPS (before, the client spoke plain HTTP to it: HTTP 400)."""
    reference = f"{tls_registry.host}/team/app:v1"
    trusted = child_pull(reference, tmp_path / "a", SSL_CERT_FILE=str(pki.ca.pem))
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stdout.split() == [
        f"https://{tls_registry.host}",
        seed.app_image.manifest.digest,
    ]
    untrusted = child_pull(reference, tmp_path / "b")
    assert untrusted.returncode == 1
    assert f"{tls_registry.host}: TLS certificate refused" in untrusted.stderr
    assert "unknown authority" in untrusted.stderr


WRONG_NAME = "the certificate is not valid for 127.0.0.1 (it is for other.example)"


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("wrong_name_registry", WRONG_NAME),
        ("expired_registry", "the certificate has expired (on "),
    ],
)
def test_a_wrong_name_or_an_expired_certificate_is_refused_with_its_reason(
    which: str, reason: str, pki: Pki, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    served: Registry = request.getfixturevalue(which)
    certs = certs_d(tmp_path / "certs.d", served.host, ca=pki.ca)
    started = time.monotonic()
    with client_for(served.host, certs, retries=4) as client:
        with pytest.raises(RegistryTLSError) as caught:
            pull_app(client, tmp_path)
        assert client.base.startswith("https://")  # never "fell back" to plain HTTP
    assert str(caught.value).startswith(f"{served.host}: TLS certificate refused: {reason}")
    assert time.monotonic() - started < 5  # refused at once, not retried


def test_a_registry_marked_insecure_is_used_despite_its_certificate_and_says_so(
    wrong_name_registry: Registry, seed: Seed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.WARNING, "layerhub.registry"),
        client_for(wrong_name_registry.host, insecure=True) as client,
    ):
        image = pull_app(client, tmp_path)
        assert client.base.startswith("https://")  # TLS, unverified; not plain HTTP
    assert image.manifest_digest == seed.app_image.manifest.digest
    assert any(
        wrong_name_registry.host in r.getMessage() and "without verifying" in r.getMessage()
        for r in caplog.records
    )


# -- mutual TLS --------------------------------------------------------------------------------


def test_mutual_tls_refused_without_the_client_certificate_works_with_it(
    mtls_registry: Registry, pki: Pki, seed: Seed, tmp_path: Path
) -> None:
    certs = certs_d(tmp_path / "certs.d", mtls_registry.host, ca=pki.ca)
    with (
        client_for(mtls_registry.host, certs) as client,
        pytest.raises(RegistryTLSError) as caught,
    ):
        pull_app(client, tmp_path)
    assert str(caught.value) == (
        f"{mtls_registry.host} requires a TLS client certificate: put client.cert and "
        f"client.key in {certs / mtls_registry.host}/"
    )
    certs_d(certs, mtls_registry.host, client=pki.client)
    with client_for(mtls_registry.host, certs) as client:
        image = pull_app(client, tmp_path)
    assert image.manifest_digest == seed.app_image.manifest.digest


def test_a_client_certificate_without_its_key_is_named(
    mtls_registry: Registry, pki: Pki, tmp_path: Path
) -> None:
    certs = certs_d(tmp_path / "certs.d", mtls_registry.host, ca=pki.ca, client=pki.client)
    (certs / mtls_registry.host / "client.key").unlink()
    with client_for(mtls_registry.host, certs) as client, pytest.raises(RegistryTLSError) as caught:
        pull_app(client, tmp_path)
    assert "client.cert has no key" in str(caught.value)


# -- HTTPS first, plain HTTP only where allowed -------------------------------------------------


def test_a_plain_http_registry_on_loopback_falls_back_at_once(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    started = time.monotonic()
    with client_for(registry.host, timeout=30.0) as client:
        image = pull_app(client, tmp_path)
        assert client.base == f"http://{registry.host}"
    assert image.manifest_digest == seed.app_image.manifest.digest
    assert time.monotonic() - started < 5  # the failed handshake costs a round trip, no timeout


def test_plain_http_elsewhere_only_when_marked_insecure(
    registry: Registry, seed: Seed, tmp_path: Path, fake_dns: Callable[[str], None]
) -> None:
    fake_dns("plain.test")
    host = f"plain.test:{registry.host.rsplit(':', 1)[1]}"
    with client_for(host) as client, pytest.raises(RegistryTLSError) as caught:
        pull_app(client, tmp_path)
    assert str(caught.value).startswith(f"{host} answers plain HTTP, not HTTPS")
    with client_for(host, insecure=True) as client:
        image = pull_app(client, tmp_path)
        assert client.base == f"http://{host}"
    assert image.manifest_digest == seed.app_image.manifest.digest


# -- mirrors -----------------------------------------------------------------------------------


def mirror_client(host: str, **kwargs: Any) -> RegistryClient:
    return client_for(host, scheme="http", **kwargs)


def pull_recording(
    client: RegistryClient, store: Store, name: str
) -> tuple[ResolvedImage, dict[str, list[str]]]:
    sources: dict[str, list[str]] = {}

    def source(digest: str, host: str) -> None:
        sources.setdefault(digest, []).append(host)

    image = pull(client, parse_reference(f"{client.host}/{name}"), store, source=source)
    return image, sources


def test_a_mirror_serves_what_it_has_and_upstream_the_rest(
    proxy: FaultyProxy, mirror_registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    """The first mirror is down; the second has team/app but lacks team/other."""
    down = f"127.0.0.1:{free_port()}"
    mirrors = [mirror_client(down), mirror_client(mirror_registry.host)]
    store = Store(tmp_path / "store")
    with client_for(proxy.host, mirrors=mirrors) as client:
        app, app_sources = pull_recording(client, store, "team/app:v1")
        other, other_sources = pull_recording(client, store, "team/other:other")
    assert app.manifest_digest == seed.app_image.manifest.digest
    # the dead mirror is tried once, then left alone; the live one served every layer
    assert app_sources == {
        seed.base.digest: [mirror_registry.host],
        seed.app.digest: [mirror_registry.host],
    }
    assert proxy.blob_gets[seed.app.digest] == proxy.blob_gets[seed.base.digest] == 0
    # team/other: the mirror lacks its manifest, upstream serves it and its new layer
    assert other.manifest_digest == seed.other_image.manifest.digest
    assert other_sources == {seed.other.digest: [mirror_registry.host, proxy.host]}
    assert proxy.blob_gets[seed.other.digest] == 1
    assert any(w.path.startswith("/v2/team/other/manifests/") for w in proxy.windows)
    assert not any(w.path.startswith("/v2/team/app/manifests/") for w in proxy.windows)
    for digest in (seed.base.digest, seed.app.digest, seed.other.digest):
        assert store.blobs.has(digest)


def test_a_mirror_serving_a_corrupt_blob_is_left_for_upstream(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    """Every blob is verified by digest, whoever serves it."""

    def mirror(req: Request) -> None:
        upstream = requests.get(
            f"http://{registry.host}{req.path}", headers=dict(req.headers), timeout=30
        )
        body = upstream.content
        if req.path.endswith(seed.app.digest):
            body = bytes(len(body))  # the right length, the wrong bytes
        req.send(upstream.status_code, body, {"Content-Type": upstream.headers["Content-Type"]})

    store = Store(tmp_path / "store")
    with serve(mirror) as bad, client_for(registry.host, mirrors=[mirror_client(bad.host)]) as c:
        image, sources = pull_recording(c, store, "team/app:v1")
    assert image.manifest_digest == seed.app_image.manifest.digest
    assert sources[seed.base.digest] == [bad.host]
    assert sources[seed.app.digest] == [bad.host, registry.host]
    assert store.blobs.read_bytes(seed.app.digest) == seed.app.data
    assert not any(store.tmp.iterdir())


def test_a_mirror_never_gets_the_upstream_login(
    basic_registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    def mirror(req: Request) -> None:  # asks for a login, as a private mirror would
        req.send(401, b"", {"WWW-Authenticate": 'Basic realm="mirror"'})

    assert basic_registry.username
    assert basic_registry.password
    login = Credentials(basic_registry.username, basic_registry.password)
    with (
        serve(mirror) as private,
        client_for(
            basic_registry.host, credentials=login, mirrors=[mirror_client(private.host)]
        ) as client,
    ):
        image = pull_app(client, tmp_path)
    assert image.manifest_digest == seed.app_image.manifest.digest
    assert private.seen  # it was asked first...
    assert private.authorizations() == []  # ...and never with the registry's login


# -- proxies -----------------------------------------------------------------------------------


def test_a_pull_through_a_connect_proxy_and_no_proxy_bypassing_it(
    tls_registry: Registry,
    pki: Pki,
    seed: Seed,
    tmp_path: Path,
    fake_dns: Callable[[str], None],
    proxy_server: ConnectProxy,
) -> None:
    fake_dns("registry.test")
    host = f"registry.test:{tls_registry.host.rsplit(':', 1)[1]}"
    certs = certs_d(tmp_path / "certs.d", host, ca=pki.ca)
    certs_d(certs, tls_registry.host, ca=pki.ca)
    proxied = ProxyConfig(https=proxy_server.url, http=proxy_server.url)
    with client_for(host, certs, proxies=proxied) as client:
        assert pull_app(client, tmp_path).manifest_digest == seed.app_image.manifest.digest
    assert proxy_server.tunnels
    assert set(proxy_server.tunnels) == {host}
    tunnels = len(proxy_server.tunnels)
    bypass = ProxyConfig(
        https=proxy_server.url, no_proxy=("localhost", ".example", "registry.test")
    )
    with client_for(host, certs, proxies=bypass) as client:
        assert pull_app(client, tmp_path).manifest_digest == seed.app_image.manifest.digest
    # loopback never goes through a proxy, whatever NO_PROXY says
    with client_for(tls_registry.host, certs, proxies=proxied) as client:
        assert pull_app(client, tmp_path).manifest_digest == seed.app_image.manifest.digest
    assert len(proxy_server.tunnels) == tunnels


# -- through the settings (the pull job) ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")
def test_a_pull_job_uses_the_settings_and_says_which_host_served_each_layer(
    settings: Settings,
    proxy: FaultyProxy,
    mirror_registry: Registry,
    seed: Seed,
) -> None:
    from layerhub.images.services import image_pull
    from layerhub.jobs.follow import progress_line
    from layerhub.jobs.models import Job

    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    settings.LAYERHUB_REGISTRY_MIRRORS = {
        proxy.host: (Mirror("http", mirror_registry.host),),
    }
    job = image_pull(team=default_team(), reference=f"{proxy.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    lines = {line["digest"]: line for line in job.progress}
    assert lines[seed.app.digest]["host"] == mirror_registry.host
    assert progress_line(lines[seed.app.digest]).endswith(
        f": Pull complete (from {mirror_registry.host})"
    )
    assert proxy.blob_gets[seed.app.digest] == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")
def test_a_pull_job_reads_certs_d_from_the_settings(
    settings: Settings, tls_registry: Registry, pki: Pki, seed: Seed, tmp_path: Path
) -> None:
    from layerhub.images.services import image_pull
    from layerhub.jobs.models import Job

    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    settings.LAYERHUB_CERTS_DIR = tmp_path / "certs.d"
    refused = image_pull(team=default_team(), reference=f"{tls_registry.host}/team/app:v1")
    refused.refresh_from_db()
    assert refused.state == Job.State.FAILED
    assert "unknown authority" in refused.error
    certs_d(settings.LAYERHUB_CERTS_DIR, tls_registry.host, ca=pki.ca)
    job = image_pull(team=default_team(), reference=f"{tls_registry.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    assert job.image.manifest_digest == seed.app_image.manifest.digest
