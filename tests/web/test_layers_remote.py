"""Browsing an image's or a layer's files from a web server that holds none of their snapshots.

Two hosts in this one process: an image is imported (and unpacked) as host ``A``, then the
process becomes host ``web``, whose snapshot directory is empty. A call to ``A`` runs the real
operation in-process with this process's settings switched to A's (its host name and its
snapshots), after the real availability check: the same operations, JSON both ways, that a
worker of A runs for a call that came over the broker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.engine.errors import InvalidDigest, InvalidPath, PathNotFound, SnapshotNotFound
from layerhub.hosts import calls
from layerhub.hosts.models import Host, current_host
from layerhub.hosts.remote_file import READ_CHUNK, chunk_decode
from layerhub.hosts.routing import HostUnavailable, host_check
from layerhub.images import snapshot_files
from layerhub.images.models import Image, Layer, Package, Snapshot
from layerhub.images.services import packages
from layerhub.images.services.packages import image_packages_scan
from layerhub.images.snapshot_files import snapshots_host
from tests.support.oci import Tree
from tests.web.test_layers_pages import (
    APP_TREE,
    BASE_TREE,
    BINARY,
    eager,  # noqa: F401 - a fixture
    import_image,
    layer_url,
    marks,
    top_layer,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]

BIG = os.urandom(2 * READ_CHUNK + 12345)  # three chunks
DPKG_STATUS = b"Package: openssl\nStatus: install ok installed\nArchitecture: amd64\n"
DPKG_STATUS += b"Version: 3.0.14-1~deb12u2\n"
EXTRA_TREE: Tree = {
    "big.bin": BIG,
    "links": None,
    "links/out": ("symlink", "/../../../../etc"),
    "links/up": ("symlink", ".."),
    "var": None,
    "var/lib": None,
    "var/lib/dpkg": None,
    "var/lib/dpkg/status": DPKG_STATUS,
}


@dataclass
class Hosts:
    """This process as host ``web`` (no snapshots), and the calls it made to other hosts."""

    root: Path
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def snapshots(self, host: str) -> Path:
        return self.root / host

    def on(self, host: str) -> Any:
        """Settings that make this process ``host``."""
        return override_settings(LAYERHUB_HOST=host, LAYERHUB_SNAPSHOTS=self.snapshots(host))

    def remote(self, op: str) -> list[dict[str, Any]]:
        """The parameters of each call of ``op`` this process sent to another host."""
        return [params for _host, name, params in self.calls if name == op]


def stamp(name: str, *, ago: float = 0.0) -> None:
    Host.objects.update_or_create(
        name=name, defaults={"heartbeat_at": timezone.now() - timedelta(seconds=ago)}
    )


@pytest.fixture
def hosts(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Hosts:
    found = Hosts(tmp_path / "snapshots")
    real = calls.host_call

    def across(host: str, op: str, *, extra_timeout: float = 0.0, **params: Any) -> Any:
        if host == current_host():
            return real(host, op, extra_timeout=extra_timeout, **params)
        host_check(host)  # a host that is gone is refused before anything is sent
        found.calls.append((host, op, params))
        with found.on(host):
            return real(host, op, extra_timeout=extra_timeout, **params)

    for module in (snapshot_files, packages):
        monkeypatch.setattr(module, "host_call", across)
    settings.LAYERHUB_HOST = "A"
    settings.LAYERHUB_SNAPSHOTS = found.snapshots("A")
    return found


@pytest.fixture
def image(hosts: Hosts, settings: Settings, tmp_path: Path) -> Image:
    """``localhost/app:1`` unpacked on A; this process is then ``web``, holding nothing."""
    imported = import_image(tmp_path, "localhost/app:1", [BASE_TREE, APP_TREE, EXTRA_TREE])
    assert set(Snapshot.objects.values_list("host", flat=True)) == {"A"}
    stamp("A")
    settings.LAYERHUB_HOST = "web"
    settings.LAYERHUB_SNAPSHOTS = hosts.snapshots("web")
    return imported


def _normal(html: str) -> str:
    return re.sub(r'(csrfmiddlewaretoken" value="|"X-CSRFToken": ")[^"]+', r"\1", html)


def _body(response: Any) -> bytes:
    if response.streaming:
        return b"".join(response.streaming_content)
    return bytes(response.content)


def _same_here_and_on_a(hosts: Hosts, client: Client, url: str, query: dict[str, str]) -> bytes:
    """What ``url`` answers on web (read through A) and on A itself (read from its disk),
    asserted the same; the answer."""
    before = len(hosts.calls)
    remote = client.get(url, query)
    body = _body(remote)
    assert len(hosts.calls) > before, f"{url} {query} was not read on A"
    with hosts.on("A"):
        local = client.get(url, query)
        local_body = _body(local)  # a download streams as it is read: read it here
    assert remote.status_code == local.status_code == 200, (url, query)
    for header in ("Content-Type", "Content-Disposition", "Content-Length"):
        assert remote.get(header) == local.get(header), (url, query, header)
    if local.get("Content-Type", "").startswith("text/html"):
        assert _normal(body.decode()) == _normal(local_body.decode()), (url, query)
    else:
        assert body == local_body, (url, query)
    return body


def test_web_without_snapshots_shows_what_the_host_holding_them_shows(
    hosts: Hosts, image: Image, admin_client: Client
) -> None:
    top = top_layer(image)
    app = image.image_layers.get(position=1).layer
    layer_page = layer_url(top).split("?")[0]
    files_page = reverse("layers:image_files", args=[image.pk])

    root = _same_here_and_on_a(hosts, admin_client, layer_page, {})
    assert marks(root.decode()) == {"big.bin": "A", "links": "A", "var": "A"}
    app_etc = _same_here_and_on_a(
        hosts, admin_client, layer_url(app).split("?")[0], {"path": "/etc"}
    )
    assert marks(app_etc.decode()) == {"motd": "D", "os-release": "C"}
    opaque = _same_here_and_on_a(
        hosts, admin_client, layer_url(app).split("?")[0], {"path": "/opt/old"}
    )
    assert marks(opaque.decode()) == {"a": "D", "b": "A"}
    assert "opaque" in opaque.decode()
    text = _same_here_and_on_a(hosts, admin_client, files_page, {"path": "/etc/os-release"})
    assert "ID=app\nVERSION=2" in text.decode()
    tree = _same_here_and_on_a(hosts, admin_client, files_page, {"path": "/"})
    assert set(marks(tree.decode())) == {"app", "big.bin", "bin", "etc", "links", "opt", "var"}
    link = _same_here_and_on_a(hosts, admin_client, files_page, {"path": "/links/out"})
    assert "/../../../../etc" in link.decode()
    binary = _same_here_and_on_a(hosts, admin_client, files_page, {"path": "/bin/tool"})
    assert "A binary file" in binary.decode()

    # downloads: the same bytes, in calls of at most READ_CHUNK bytes each
    hosts.calls.clear()
    got = _same_here_and_on_a(
        hosts, admin_client, files_page, {"path": "/big.bin", "download": "1"}
    )
    assert got == BIG
    reads = hosts.remote("snapshots.read")
    assert len(reads) == 3
    assert all(read["length"] <= READ_CHUNK for read in reads)
    base_tool = _same_here_and_on_a(
        hosts,
        admin_client,
        layer_url(image.image_layers.get(position=0).layer).split("?")[0],
        {"path": "/bin/tool", "download": "1"},
    )
    assert base_tool == BINARY

    # the API's listings, the same JSON
    chain = top.chain_id
    for url, query in (
        (f"/api/v1/layers/{chain}/files/", {}),
        (f"/api/v1/layers/{app.chain_id}/files/", {"path": "/etc"}),
        (f"/api/v1/layers/{chain}/files/", {"path": "/big.bin"}),
        (f"/api/v1/images/{image.pk}/files/", {"path": "/etc"}),
    ):
        _same_here_and_on_a(hosts, admin_client, url, query)
    assert not hosts.snapshots("web").exists() or not any(hosts.snapshots("web").iterdir())


def test_hostile_paths_are_refused_on_the_web_and_on_the_host(
    hosts: Hosts, image: Image, admin_client: Client
) -> None:
    files_page = reverse("layers:image_files", args=[image.pk])
    for bad in ("../../etc/passwd", "/etc/../../../root", "relative", "/a\x00b"):
        assert admin_client.get(files_page, {"path": bad}).status_code == 400, bad
    # a symlink among the parents is not followed on the host: nothing of its /etc shows
    assert admin_client.get(files_page, {"path": "/links/out/passwd"}).status_code == 404
    assert (
        admin_client.get(files_page, {"path": "/links/up/etc", "download": "1"}).status_code == 404
    )
    assert admin_client.get(files_page, {"path": "/links/out", "download": "1"}).status_code == 400

    # the host's own operations, called as a forged call would: the same refusals
    chains = list(image.image_layers.order_by("position").values_list("layer__chain_id", flat=True))
    read = {"offset": 0, "length": 10}
    with hosts.on("A"):
        for bad in ("../etc/passwd", "/etc/../../x", "relative", "/a\x00b"):
            with pytest.raises(InvalidPath):
                calls.host_call("A", "snapshots.tree", chains=chains, path=bad)
            with pytest.raises(InvalidPath):
                calls.host_call("A", "snapshots.read", chains=chains, path=bad, **read)
        for escaping in ("/links/out/passwd", "/links/up/etc/hostname", "/links/up/../x"):
            with pytest.raises((PathNotFound, InvalidPath)):
                calls.host_call("A", "snapshots.read", chains=chains, path=escaping, **read)
        with pytest.raises(InvalidPath, match="not a regular file"):
            calls.host_call("A", "snapshots.read", chains=chains, path="/links/out", **read)
        for chain in ("sha256:../../../etc", "/etc", "sha256:" + "0" * 63 + "/"):
            with pytest.raises(InvalidDigest):
                calls.host_call("A", "snapshots.tree", chains=[chain], path="/")
            with pytest.raises(InvalidDigest):
                calls.host_call("A", "snapshots.layer", chain=chain, below=None, path="/")
        with pytest.raises(SnapshotNotFound):
            calls.host_call("A", "snapshots.tree", chains=chains[0], path="/")
        with pytest.raises(SnapshotNotFound):
            calls.host_call("A", "snapshots.tree", chains=["sha256:" + "0" * 64], path="/")
        # a chunk is never more than READ_CHUNK, whatever is asked
        big = calls.host_call(
            "A", "snapshots.read", chains=chains, path="/big.bin", offset=0, length=1 << 30
        )
        assert chunk_decode(big) == BIG[:READ_CHUNK]


def test_no_live_host_or_no_host_holding_them_is_a_clear_message(
    hosts: Hosts,
    image: Image,
    admin_client: Client,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A's heartbeat is fresh but it does not answer in time
    def silent(host: str, op: str, **params: Any) -> Any:
        raise HostUnavailable(f"host {host} did not answer within 30s")

    with monkeypatch.context() as patched:
        patched.setattr(snapshot_files, "host_call", silent)
        page = admin_client.get(reverse("layers:image_files", args=[image.pk]))
        assert page.status_code == 503
        assert "host A did not answer within 30s" in page.content.decode()
        api = admin_client.get(f"/api/v1/layers/{top_layer(image).chain_id}/files/")
        assert api.status_code == 503
        assert api.json()["error"]["message"] == "host A did not answer within 30s"

    settings.LAYERHUB_HOST_GONE_AFTER = 5.0
    stamp("A", ago=60)
    top = top_layer(image)
    files_page = reverse("layers:image_files", args=[image.pk])
    pages: list[tuple[str, dict[str, str]]] = [
        (layer_url(top), {}),
        (files_page, {}),
        (files_page, {"path": "/big.bin", "download": "1"}),
    ]
    for url, query in pages:
        response = admin_client.get(url, query)
        assert response.status_code == 503, url
        html = response.content.decode()
        assert "no host that holds the snapshots of" in html
        assert "host A is unavailable: no heartbeat from its worker" in html
    for url in (f"/api/v1/layers/{top.chain_id}/files/", f"/api/v1/images/{image.pk}/files/"):
        response = admin_client.get(url)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "host_unavailable"
    assert hosts.calls == []  # nothing was sent to a host that is gone

    Host.objects.filter(name="A").delete()
    response = admin_client.get(files_page)
    assert response.status_code == 503
    assert "no worker of that host has ever reported" in response.content.decode()

    Snapshot.objects.all().delete()  # unpacked once, then every host's cache let them go
    layer_page = admin_client.get(layer_url(top))
    assert layer_page.status_code == 200  # the layer's facts still show
    assert "the snapshot caches let its layers go" in layer_page.content.decode()
    Layer.objects.update(unpacked_at=None)  # never unpacked anywhere
    layer_page = admin_client.get(layer_url(top))
    assert layer_page.status_code == 200
    assert "is not unpacked on any host yet" in layer_page.content.decode()
    files = admin_client.get(files_page)
    assert files.status_code == 404
    assert "is not unpacked on any host yet" in files.content.decode()
    api = admin_client.get(f"/api/v1/images/{image.pk}/files/")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "snapshot_not_found"


def test_the_host_is_this_one_with_no_query_else_a_live_holder_freshest_first(
    hosts: Hosts, image: Image, settings: Settings, django_assert_num_queries: Callable[..., Any]
) -> None:
    chains = list(image.image_layers.order_by("position").values_list("layer__chain_id", flat=True))
    with hosts.on("A"), django_assert_num_queries(0):
        assert snapshots_host(chains, what="it") == "A"
    layers = {layer.chain_id: layer for layer in Layer.objects.all()}
    for host in ("B", "C"):
        for chain in chains[:2]:
            Snapshot.objects.create(layer=layers[chain], host=host, size=1)
    stamp("A", ago=10)
    stamp("B", ago=3)
    stamp("C", ago=1)
    assert snapshots_host(chains, what="it") == "A"  # the only one holding them all
    assert snapshots_host(chains[:2], what="it") == "C"  # the freshest of three
    stamp("C", ago=3600)  # gone
    assert snapshots_host(chains[:2], what="it") == "B"
    # a layer page prefers a host that also holds the layers below, however fresh
    stamp("B", ago=20)
    Snapshot.objects.filter(host="A", layer=layers[chains[0]]).delete()
    assert snapshots_host(chains[1:2], what="it") == "A"
    assert snapshots_host(chains[1:2], also=chains[:1], what="it") == "B"


def test_a_package_scan_on_a_host_without_the_snapshots_reads_them_where_they_are(
    hosts: Hosts, image: Image
) -> None:
    Package.objects.filter(image=image).delete()
    scan = image_packages_scan(image=image)
    assert scan.count == 1
    assert Package.objects.filter(image=image, name="openssl").exists()
    assert [host for host, op, _ in hosts.calls if op == "image.packages"] == ["A"]
    assert not hosts.snapshots("web").exists() or not any(hosts.snapshots("web").iterdir())
