"""Wasted space, the file tree and duplicate bytes on built images: imported through the real
services, unpacked into a real store (in both whiteout forms) and indexed from the snapshots."""

from __future__ import annotations

import re
from collections.abc import Iterator
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from layerhub.accounts.models import Membership, Role, Team
from layerhub.core.store import get_store
from layerhub.engine.file_index import FileRecord
from layerhub.engine.store import Store
from layerhub.engine.wasted import DELETED, HIDDEN, PARENT_DELETED, PARENT_REPLACED, REPLACED
from layerhub.images import wasted as wasted_module
from layerhub.images.dedup import duplicates_report
from layerhub.images.duplicates import shared_contents
from layerhub.images.file_index import layer_files, layer_files_from_snapshot, layer_files_record
from layerhub.images.lookup import image_lookup
from layerhub.images.models import FileEntry, Image, ImageLayer, LayerFiles
from layerhub.images.services import image_import
from layerhub.images.wasted import image_tree_page, image_wasted
from layerhub.jobs.models import Job
from tests.support.oci import Image as OciImage
from tests.support.oci import Tree, make_layer, write_layout
from tests.support.teams import default_team
from workers.celery import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]

K = b"k" * 1000  # sizes that add up to figures one can read
BASE: Tree = {
    "etc": None,
    "etc/conf": b"c" * 100,
    "tmp": None,
    "tmp/big": b"b" * 5000,
    "src": None,
    "src/a": None,
    "src/a/one": b"1" * 10,
    "src/two": b"2" * 20,
    "var": None,
    "var/cache": None,
    "var/cache/old": b"o" * 70,
    "opt": None,
    "opt/app": None,
    "opt/app/lib": b"l" * 80,
    "usr": None,
    "usr/lib": None,
    "usr/lib/libfoo.so": K,
    "usr/lib/libfoo.so.1": ("hardlink", "usr/lib/libfoo.so"),
    "app": None,
    "app/x": b"x" * 7,
}
MIDDLE: Tree = {
    "etc": None,
    "etc/conf": b"C" * 200,  # the first replacement
    "tmp": None,
    "tmp/big": "whiteout",  # added in BASE, removed here: counts once
    "src": None,
    "src/b": None,
    "src/b/three": b"3" * 30,
    "src/two": b"2" * 40,
    "var": None,
    "var/cache": None,
    "var/cache/.wh..wh..opq": b"",  # opaque: hides var/cache/old, keeps its own
    "var/cache/new": b"n" * 3,
    "opt": None,
    "opt/app": ("symlink", "/srv"),  # a non-directory where a directory was
    "usr": None,
    "usr/lib": None,
    "usr/lib/libfoo.so": "whiteout",  # one name of two: the other keeps the bytes
    # the layer deletes the lower app/x and writes its own: its whiteout spares its own file
    "app": None,
    "app/.wh.x": b"",
    "app/x": b"X" * 9,
}
TOP: Tree = {
    "etc": None,
    "etc/conf": b"Z" * 300,  # the second replacement: two superseded copies
    "src": "whiteout",  # dive issue 684's case: a directory of two layers' files
    "usr": None,
    "usr/lib": None,
    "usr/lib/libfoo.so.1": "whiteout",  # the last name: the hardlinked copy is wasted once
}


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (the import queues the unpacks)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.fixture(params=["overlay", "oci"])
def store_form(request: pytest.FixtureRequest, layerhub_store: Path) -> str:
    """Whiteouts kept in overlayfs' form or as OCI marker files: the index reads both."""
    form: str = request.param
    Store(layerhub_store, form)
    assert get_store().whiteouts.name == form
    return form


def import_image(
    tmp_path: Path, ref: str, layers: list[Tree], *, team: Team | None = None, index: bool = True
) -> Image:
    """Import ``layers`` tagged ``ref`` (unpacked eagerly, which records each layer's file
    index); ``index=False`` drops those indexes, as for snapshots made before indexing."""
    layout = write_layout(
        tmp_path / re.sub(r"\W", "_", ref), {ref: OciImage([make_layer(t) for t in layers])}
    )
    job = image_import(team=team or default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    image = image_lookup(ref)
    unpack = Job.objects.filter(image=image, kind=Job.Kind.UNPACK).order_by("-pk").first()
    assert unpack is None or unpack.state == Job.State.SUCCEEDED, unpack.error
    if index:
        index_layers(image)
    else:
        LayerFiles.objects.filter(layer__image_layers__image=image).delete()
        FileEntry.objects.filter(layer__image_layers__image=image).delete()
    return image


def index_layers(image: Image, positions: set[int] | None = None) -> None:
    store = get_store()
    for row in ImageLayer.objects.filter(image=image).select_related("layer"):
        if positions is None or row.position in positions:
            tree = store.snapshots.path(row.layer.chain_id)
            layer_files_from_snapshot(row.layer, tree, store.whiteouts)


@pytest.fixture
def built(tmp_path: Path, store_form: str) -> Image:
    return import_image(tmp_path, "localhost/waste:1", [BASE, MIDDLE, TOP])


def test_wasted_space_of_a_built_image(built: Image) -> None:
    wasted = image_wasted(built)
    report = wasted.report
    assert report is not None
    copies = sorted((c.path, c.size, c.added_by, c.removed_by, c.reason) for c in report.copies)
    # app/x: the overlay form keeps only the layer's file, the OCI form its whiteout as well;
    # either way the lower copy is counted once and the layer's own file is kept
    assert copies[0][:4] == ("app/x", 7, 0, 1)
    assert copies[0][4] in (DELETED, REPLACED)
    assert copies[1:] == [
        ("etc/conf", 100, 0, 1, REPLACED),
        ("etc/conf", 200, 1, 2, REPLACED),
        ("opt/app/lib", 80, 0, 1, PARENT_REPLACED),
        ("src/a/one", 10, 0, 2, PARENT_DELETED),
        ("src/b/three", 30, 1, 2, PARENT_DELETED),
        ("src/two", 20, 0, 1, REPLACED),
        ("src/two", 40, 1, 2, PARENT_DELETED),
        ("tmp/big", 5000, 0, 1, DELETED),
        ("usr/lib/libfoo.so", 1000, 0, 2, DELETED),
        ("var/cache/old", 70, 0, 1, HIDDEN),
    ]
    assert report.wasted == 7 + 100 + 200 + 80 + 10 + 30 + 20 + 40 + 5000 + 1000 + 70
    # every layer's file bytes (the hardlinked copy once) are either visible or wasted
    total = sum(
        LayerFiles.objects.filter(layer__image_layers__image=built).values_list(
            "content_bytes", flat=True
        )
    )
    assert report.total == total == 6287 + 282 + 300
    assert report.kept == 300 + 3 + 9  # etc/conf, var/cache/new, app/x
    assert report.efficiency == pytest.approx(312 / 6869)
    # the final tree, with the layer that provides each path
    assert report.tree["etc/conf"].layer == 2
    assert report.tree["app/x"].layer == 1
    assert report.tree["opt/app"].record.kind == "l"
    assert not any(p == "src" or p.startswith(("src/", "tmp/", "usr/lib/")) for p in report.tree)
    top = wasted.top(2)
    assert [(c.path, c.added_by.position, c.removed_by.position) for c in top] == [
        ("/tmp/big", 0, 1),
        ("/usr/lib/libfoo.so", 0, 2),
    ]
    assert top[1].links == 2


def test_pending_index_gives_no_figures(tmp_path: Path, layerhub_store: Path) -> None:
    image = import_image(tmp_path, "localhost/pending:1", [BASE, MIDDLE, TOP], index=False)
    index_layers(image, {0, 2})
    wasted = image_wasted(image)
    assert wasted.report is None
    assert [ref.position for ref in wasted.pending] == [1]
    index_layers(image, {1})
    assert image_wasted(image).report is not None


def test_tree_lists_one_directory_with_marks(built: Image, monkeypatch: pytest.MonkeyPatch) -> None:
    wasted = image_wasted(built)
    root = image_tree_page(wasted, "/")
    rows = {row.name: row for row in root.rows}
    # removed paths with wasted copies are listed, marked removed
    assert rows["src"].removed
    assert rows["src"].opens
    assert rows["src"].wasted_below == 100
    assert rows["tmp"].wasted_below == 5000
    assert not rows["tmp"].removed
    etc = image_tree_page(wasted, "/etc")
    [conf] = etc.rows
    assert (conf.kind, conf.size, conf.mode, conf.uid, conf.layer and conf.layer.position) == (
        "file",
        300,
        "-rw-r--r--",
        0,
        2,
    )
    assert [(c.size, c.added_by.position, c.removed_by.position) for c in conf.superseded] == [
        (100, 0, 1),
        (200, 1, 2),
    ]
    src = image_tree_page(wasted, "/src")
    assert [(r.name, r.removed, r.wasted_below) for r in src.rows] == [
        ("a", True, 10),
        ("b", True, 30),
        ("two", True, 60),
    ]
    # a symlink put where a directory was lists the files it wasted
    opt = {r.name: r for r in image_tree_page(wasted, "/opt").rows}
    assert opt["app"].kind == "symlink"
    assert opt["app"].opens
    under = image_tree_page(wasted, "/opt/app")
    assert under.entry is not None
    assert under.entry.kind == "symlink"
    assert [(r.name, r.removed, r.wasted_below) for r in under.rows] == [("lib", True, 80)]
    # a file asked for: the entry, no listing
    one = image_tree_page(wasted, "/etc/conf")
    assert not one.is_dir
    assert one.entry is not None
    assert one.entry.superseded
    with pytest.raises(Exception, match="not in this image"):
        image_tree_page(wasted, "/nowhere")
    # a large directory comes a page at a time
    monkeypatch.setattr(wasted_module, "TREE_PAGE", 2)
    first = image_tree_page(wasted, "/")
    last = image_tree_page(wasted, "/", page=99)
    assert first.pages == last.page == 4
    assert len(first.rows) == 2
    names = [r.name for p in range(1, 5) for r in image_tree_page(wasted, "/", page=p).rows]
    assert names == sorted(rows)


def test_duplicates_across_images(tmp_path: Path, layerhub_store: Path) -> None:
    first = import_image(
        tmp_path, "localhost/one:1", [{"lib": None, "lib/a.so": K * 2, "lib/empty": b""}]
    )
    second = import_image(
        tmp_path,
        "localhost/two:1",
        [{"usr": None, "usr/b.so": K * 2, "usr/own": b"only here", "usr/empty": b""}],
    )
    ids = list(ImageLayer.objects.filter(image=second).values_list("layer_id", flat=True))
    shared = shared_contents(ids)
    assert len(shared) == 1
    wasted = image_wasted(second)
    assert wasted.duplicate_bytes == 2000
    rows = {r.name: r for r in image_tree_page(wasted, "/usr").rows}
    assert rows["b.so"].duplicated
    assert not rows["own"].duplicated
    assert not rows["empty"].duplicated  # both images hold an empty file: nothing to share
    assert image_wasted(first).duplicate_bytes == 2000
    # the store-wide report says the same: one duplicated content, stored twice
    report = duplicates_report()
    assert (report.contents, report.duplicate_bytes, report.copy_bytes) == (1, 4000, 2000)


# -- pages, API and CLI ------------------------------------------------------------------------


def outsider_client() -> Client:
    other = Team.objects.create(name="other")
    user = User.objects.create_user("outsider", password="pw")
    Membership.objects.create(team=other, user=user, role=Role.VIEWER)
    client = Client()
    client.force_login(user)
    return client


def test_image_page_and_wasted_panel(admin_client: Client, built: Image) -> None:
    page = admin_client.get(reverse("images:detail", args=[built.pk])).content.decode()
    panel_url = reverse("images:image_wasted", args=[built.pk])
    assert f'hx-get="{panel_url}"' in page
    panel = admin_client.get(panel_url).content.decode()
    assert 'data-figure="wasted"' in panel
    assert 'title="6557 bytes"' in panel
    assert "4.5%" in panel  # 312 / 6869
    assert 'data-figure="duplicate_bytes"' in panel
    assert 'data-wasted="/tmp/big"' in panel
    chain = ImageLayer.objects.get(image=built, position=1).layer.chain_id.removeprefix("sha256:")
    assert reverse("layers:detail", args=[chain]) in panel
    assert outsider_client().get(panel_url).status_code == 404


def test_tree_page_navigation(admin_client: Client, built: Image) -> None:
    url = reverse("images:files", args=[built.pk])
    root = admin_client.get(url)
    assert root.status_code == 200
    html = root.content.decode()
    assert "<html" in html
    assert 'data-path="/src"' in html
    assert f'hx-get="{url}?path=/etc"' in html
    fragment = admin_client.get(url, {"path": "/etc"}, HTTP_HX_REQUEST="true").content.decode()
    assert "<html" not in fragment
    assert '<div id="file-tree">' in fragment
    assert 'data-path="/etc/conf"' in fragment
    assert "#0&rarr;#1" in fragment
    assert "#1&rarr;#2" in fragment
    assert admin_client.get(url, {"path": "/nowhere"}).status_code == 404
    assert admin_client.get(url, {"path": "/etc/../.."}).status_code == 400
    assert outsider_client().get(url).status_code == 404


def test_pages_say_index_pending(
    admin_client: Client, tmp_path: Path, layerhub_store: Path
) -> None:
    image = import_image(tmp_path, "localhost/pending:1", [BASE, TOP], index=False)
    index_layers(image, {0})
    panel = admin_client.get(reverse("images:image_wasted", args=[image.pk])).content.decode()
    assert "index pending" in panel
    assert 'data-figure="wasted"' not in panel
    tree = admin_client.get(reverse("images:files", args=[image.pk])).content.decode()
    assert "index pending" in tree
    api = APIClient()
    api.force_authenticate(User.objects.get(username="admin"))
    body = api.get(f"/api/v1/images/{image.pk}/wasted/").json()
    assert body["index"] == "pending"
    assert body["wasted_bytes"] is None
    assert body["efficiency"] is None
    assert [layer["position"] for layer in body["pending_layers"]] == [1]
    assert api.get(f"/api/v1/images/{image.pk}/tree/").json()["entries"] is None
    with pytest.raises(CommandError, match="index pending"):
        call_command("wasted", "localhost/pending:1", stdout=StringIO())


def test_api_reads(admin_client: Client, built: Image) -> None:
    api = APIClient()
    api.force_authenticate(User.objects.get(username="admin"))
    body = api.get(f"/api/v1/images/{built.pk}/wasted/", {"limit": 3}).json()
    assert body["index"] == "complete"
    assert (body["wasted_bytes"], body["total_bytes"], body["kept_bytes"]) == (6557, 6869, 312)
    assert body["wasted_file_count"] == 11
    assert [f["path"] for f in body["wasted_files"]] == [
        "/tmp/big",
        "/usr/lib/libfoo.so",
        "/etc/conf",
    ]
    assert body["wasted_files"][2]["added_by"]["position"] == 1
    assert body["wasted_files"][2]["removed_by"]["position"] == 2
    assert api.get(f"/api/v1/images/{built.pk}/wasted/", {"limit": "x"}).status_code == 400
    tree = api.get(f"/api/v1/images/{built.pk}/tree/", {"path": "/etc"}).json()
    [conf] = tree["entries"]
    assert conf["path"] == "/etc/conf"
    assert conf["layer"]["position"] == 2
    assert [c["size"] for c in conf["superseded"]] == [100, 200]
    assert conf["sha256"]
    one = api.get(f"/api/v1/images/{built.pk}/tree/", {"path": "/etc/conf"}).json()
    assert one["entries"] is None
    assert one["entry"]["layer"]["position"] == 2
    link = api.get(f"/api/v1/images/{built.pk}/tree/", {"path": "/opt/app"}).json()
    assert link["entry"]["kind"] == "symlink"
    assert link["entry"]["link"] == "/srv"
    assert [(e["name"], e["removed"], e["wasted_bytes"]) for e in link["entries"]] == [
        ("lib", True, 80)
    ]
    missing = api.get(f"/api/v1/images/{built.pk}/tree/", {"path": "/nope"})
    assert missing.status_code == 404
    assert "not in this image" in str(missing.json())
    assert api.get(f"/api/v1/images/{built.pk}/tree/", {"path": "/../x"}).status_code == 400
    other = outsider_client()
    assert other.get(f"/api/v1/images/{built.pk}/wasted/").status_code == 404
    assert other.get(f"/api/v1/images/{built.pk}/tree/").status_code == 404


def test_cli_report(built: Image) -> None:
    out = StringIO()
    call_command("wasted", "localhost/waste:1", "--limit", "2", stdout=out)
    text = out.getvalue()
    assert "wastedBytes: 6557 bytes" in text
    assert "efficiency: 4.5421 %" in text
    assert "Wasted Files: 11, the 2 biggest" in text
    lines = text.splitlines()
    assert lines[-3].split() == ["SIZE", "ADDED", "BY", "REMOVED", "BY", "HOW", "PATH"]
    assert lines[-2].endswith("deleted   /tmp/big")
    assert lines[-1].endswith("/usr/lib/libfoo.so (2 links)")
    with pytest.raises(CommandError):
        call_command("wasted", "localhost/nothing:1", stdout=StringIO())


def test_a_layer_indexed_again_is_stacked_again(built: Image) -> None:
    assert image_wasted(built).report is not None  # the stack is kept now
    top = ImageLayer.objects.get(image=built, position=2).layer
    records = list(layer_files([top.pk])[top.pk])
    layer_files_record(top, [*records, FileRecord("tmp/late", "f", 0o644, size=11)])
    report = image_wasted(built).report
    assert report is not None
    assert report.tree["tmp/late"].layer == 2
    assert report.total == 6869 + 11
