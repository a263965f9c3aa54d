"""The layer page (a layer's own A/C/D changes, a directory at a time) and an image's files,
over images imported through the real services into a real store."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from layerhub.core.store import get_store
from layerhub.engine.store import Store
from layerhub.hosts.calls import host_call
from layerhub.images import snapshot_files
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Layer
from layerhub.images.services import image_import
from layerhub.jobs.models import Job
from tests.support.oci import Image as OciImage
from tests.support.oci import Tree, make_layer, write_layout
from tests.support.teams import default_team
from workers.celery import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]

BINARY = bytes(random.Random(7).randbytes(3000)) + b"\x00\x01"
BASE_TREE: Tree = {
    "bin": None,
    "bin/tool": BINARY,
    "etc": None,
    "etc/motd": b"welcome\n",
    "etc/os-release": b"ID=base\n",
    "opt": None,
    "opt/old": None,
    "opt/old/a": b"a",
}
APP_TREE: Tree = {
    "app": None,
    "app/run": b"#!/bin/sh\necho app\n",
    "etc": None,
    "etc/os-release": b"ID=app\nVERSION=2\n",
    "etc/motd": "whiteout",
    "opt": None,
    "opt/old": None,
    "opt/old/.wh..wh..opq": b"",
    "opt/old/b": b"b",
}


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (the import queues the unpacks)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


def import_image(tmp_path: Path, ref: str, layers: list[Tree]) -> Image:
    """Import an OCI layout of ``layers`` tagged ``ref`` and wait for its unpack (eager)."""
    image = OciImage([make_layer(tree) for tree in layers])
    layout = write_layout(tmp_path / re.sub(r"\W", "_", ref), {ref: image})
    job = image_import(team=default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return image_lookup(ref)


@pytest.fixture(params=["overlay", "oci"])
def store_form(request: pytest.FixtureRequest, layerhub_store: Path) -> str:
    """The store keeps whiteouts in overlayfs' form (as root) or as OCI marker files: the
    pages read both through the store's adapter."""
    form: str = request.param
    Store(layerhub_store, form)  # records the form; the services' store then reads it
    assert get_store().whiteouts.name == form
    return form


@pytest.fixture
def app_image(tmp_path: Path, store_form: str) -> Image:
    return import_image(tmp_path, "localhost/app:1", [BASE_TREE, APP_TREE])


def top_layer(image: Image) -> Layer:
    return image.image_layers.select_related("layer").order_by("-position")[0].layer


def layer_url(layer: Layer, **query: str) -> str:
    url = reverse("layers:detail", args=[layer.chain_id.split(":")[1]])
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


def marks(html: str) -> dict[str, str]:
    """{name: mark} of the listing's rows."""
    found = {}
    for mark, cell in re.findall(
        r'<td class="mark"[^>]*>(\w?)</td>\s*<td class="name">\s*(.*?)\s*</td>', html, re.S
    ):
        name = re.sub(r"<[^>]+>", "", cell).split("\u2192")[0].strip().rstrip("/")
        found[name] = mark
    return found


def test_layer_page_shows_added_changed_and_deleted(admin_client: Client, app_image: Image) -> None:
    layer = top_layer(app_image)

    root = admin_client.get(layer_url(layer))
    assert root.status_code == 200
    html = root.content.decode()
    for digest in (layer.digest, layer.chain_id, layer.diff_id):
        assert digest in html
    assert reverse("images:detail", args=[app_image.pk]) in html
    assert marks(html) == {"app": "A", "etc": "C", "opt": "C"}

    etc = admin_client.get(layer_url(layer, path="/etc")).content.decode()
    assert marks(etc) == {"motd": "D", "os-release": "C"}

    opt_old = admin_client.get(layer_url(layer, path="/opt/old")).content.decode()
    # the opaque directory hides the base's "a": deleted; "b" is new
    assert marks(opt_old) == {"a": "D", "b": "A"}
    assert "opaque" in opt_old

    app_dir = admin_client.get(layer_url(layer, path="/app")).content.decode()
    assert marks(app_dir) == {"run": "A"}


def test_base_layer_adds_everything_and_shows_a_file(
    admin_client: Client, app_image: Image
) -> None:
    base = app_image.image_layers.select_related("layer").get(position=0).layer
    html = admin_client.get(layer_url(base, path="/etc")).content.decode()
    assert marks(html) == {"motd": "A", "os-release": "A"}
    shown = admin_client.get(layer_url(base, path="/etc/os-release")).content.decode()
    assert "ID=base" in shown
    binary = admin_client.get(layer_url(base, path="/bin/tool"))
    assert "A binary file" in binary.content.decode()
    download = admin_client.get(layer_url(base, path="/bin/tool", download="1"))
    assert b"".join(download.streaming_content) == BINARY  # type: ignore[attr-defined]


def test_layer_with_no_snapshot_says_so(admin_client: Client, app_image: Image) -> None:
    layer = top_layer(app_image)
    get_store().snapshots.remove(layer.chain_id)
    response = admin_client.get(layer_url(layer))
    assert response.status_code == 200
    assert "is not unpacked on any host" in response.content.decode()


def test_layer_page_errors(admin_client: Client, app_image: Image) -> None:
    layer = top_layer(app_image)
    assert admin_client.get(reverse("layers:detail", args=["0" * 64])).status_code == 404
    assert admin_client.get(reverse("layers:detail", args=["nothex"])).status_code == 404
    traversal = admin_client.get(layer_url(layer, path="/etc/../../../etc"))
    assert traversal.status_code == 400
    assert "must not contain" in traversal.content.decode()
    missing = admin_client.get(layer_url(layer, path="/nope"))
    assert missing.status_code == 404
    assert "no such file" in missing.content.decode()


def test_image_files_browse_view_and_download(admin_client: Client, app_image: Image) -> None:
    url = reverse("layers:image_files", args=[app_image.pk])
    root = admin_client.get(url)
    assert root.status_code == 200
    names = set(marks(root.content.decode()))
    assert names == {"app", "bin", "etc", "opt"}

    etc = admin_client.get(url, {"path": "/etc"}).content.decode()
    assert set(marks(etc)) == {"os-release"}  # motd is deleted by the top layer
    text = admin_client.get(url, {"path": "/etc/os-release"}).content.decode()
    assert "ID=app\nVERSION=2" in text
    opt_old = admin_client.get(url, {"path": "/opt/old"}).content.decode()
    assert set(marks(opt_old)) == {"b"}

    binary = admin_client.get(url, {"path": "/bin/tool"})
    assert "A binary file" in binary.content.decode()
    download = admin_client.get(url, {"path": "/bin/tool", "download": "1"})
    assert download.status_code == 200
    assert "attachment" in download["Content-Disposition"]
    assert b"".join(download.streaming_content) == BINARY  # type: ignore[attr-defined]


def test_a_download_on_the_host_holding_the_snapshots_reads_the_file_itself(
    admin_client: Client, app_image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No chunked host calls (base64 in JSON, a megabyte at a time) for a file on this disk."""
    calls: list[str] = []

    def spy(host: str, op: str, **params: Any) -> Any:
        calls.append(op)
        return host_call(host, op, **params)

    monkeypatch.setattr(snapshot_files, "host_call", spy)
    url = reverse("layers:image_files", args=[app_image.pk])
    download = admin_client.get(url, {"path": "/bin/tool", "download": "1"})
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == BINARY  # type: ignore[attr-defined]
    assert "snapshots.read" not in calls
    assert calls, "the entry is still looked up through the snapshots' host"


def test_image_files_large_text_is_capped(admin_client: Client, tmp_path: Path) -> None:
    big = b"line of text\n" * 30_000  # 390 kB, past the 256 KiB shown
    image = import_image(tmp_path, "localhost/big:1", [{"big.txt": big}])
    url = reverse("layers:image_files", args=[image.pk])
    html = admin_client.get(url, {"path": "/big.txt"}).content.decode()
    assert "first 256 KiB" in html
    assert html.count("line of text") < 30_000


def test_image_files_hostile_paths(admin_client: Client, app_image: Image, tmp_path: Path) -> None:
    url = reverse("layers:image_files", args=[app_image.pk])
    for bad in ("../../etc/passwd", "/etc/../../../root", "relative", "/a\x00b"):
        response = admin_client.get(url, {"path": bad})
        assert response.status_code == 400, bad
        assert b"Traceback" not in response.content
    assert admin_client.get(url, {"path": "/etc/motd"}).status_code == 404
    assert admin_client.get(url, {"path": "/etc", "download": "1"}).status_code == 400
    assert admin_client.get(reverse("layers:image_files", args=[999_999])).status_code == 404


def test_image_files_never_follow_a_symlink_out(admin_client: Client, tmp_path: Path) -> None:
    image = import_image(
        tmp_path,
        "localhost/links:1",
        [{"etc": None, "etc/host": ("symlink", "/../../../../etc"), "up": ("symlink", "..")}],
    )
    url = reverse("layers:image_files", args=[image.pk])
    html = admin_client.get(url, {"path": "/etc"}).content.decode()
    assert "/../../../../etc" in html  # the target is shown as stored
    # a symlink among the parents is not followed: nothing of the host's /etc shows
    response = admin_client.get(url, {"path": "/etc/host/passwd"})
    assert response.status_code == 404
    assert admin_client.get(url, {"path": "/up/etc", "download": "1"}).status_code == 404
    link = admin_client.get(url, {"path": "/etc/host"}).content.decode()
    assert "symbolic link" in link


def test_image_not_unpacked_is_an_error_page(admin_client: Client, app_image: Image) -> None:
    get_store().snapshots.remove(top_layer(app_image).chain_id)
    response = admin_client.get(reverse("layers:image_files", args=[app_image.pk]))
    assert response.status_code == 404
    assert "is not unpacked on any host" in response.content.decode()


def test_anonymous_is_sent_to_sign_in(client: Client, app_image: Image) -> None:
    for url in (
        layer_url(top_layer(app_image)),
        reverse("layers:image_files", args=[app_image.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_layer_page_queries_do_not_grow(
    admin_client: Client, tmp_path: Path, django_assert_max_num_queries: object
) -> None:
    images = [
        import_image(tmp_path, f"localhost/fam{i}:1", [BASE_TREE, {f"only{i}": b"x"}])
        for i in range(4)
    ]
    base = images[0].image_layers.select_related("layer").get(position=0).layer
    with django_assert_max_num_queries(9):  # type: ignore[operator]
        html = admin_client.get(layer_url(base)).content.decode()
    assert all(reverse("images:detail", args=[i.pk]) in html for i in images)
    with django_assert_max_num_queries(9):  # type: ignore[operator]
        admin_client.get(reverse("layers:image_files", args=[images[0].pk]), {"path": "/etc"})
