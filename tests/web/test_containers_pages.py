"""The containers pages over the busybox base image imported through the real services: list,
create, a container's stack, diff, files (write, upload, mkdir, delete), a command run with
runc, commit and remove."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from layerhub.containers.models import Container
from layerhub.containers.services import container_create, container_diff, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.runtime import runtime_unavailable_reason
from layerhub.engine.store import Store
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image
from layerhub.images.services import image_import
from layerhub.jobs.models import Job
from tests.support.busybox import busybox_layer
from tests.support.oci import Image as OciImage
from tests.support.oci import Index, LayerBlob, make_layer, write_layout
from tests.support.teams import default_team
from workers.celery import app

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]
BASE = "localhost/base:1"


@pytest.fixture
def eager() -> Iterator[None]:
    """Run queued jobs in place (the import's unpacks, a commit)."""
    saved = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield
    app.conf.task_always_eager, app.conf.task_eager_propagates = saved


@pytest.fixture
def base(tmp_path: Path) -> Image:
    return import_busybox(tmp_path)


def import_busybox(tmp_path: Path, children: int = 0) -> Image:
    """The busybox base image, imported from an OCI layout and unpacked, with ``children``
    more images on it (``localhost/child:<i>``, one small layer each)."""
    raw = busybox_layer()
    layer = LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )
    tagged: dict[str, OciImage | Index] = {BASE: OciImage([layer])}
    for i in range(children):
        tagged[f"localhost/child:{i}"] = OciImage([layer, make_layer({f"c{i}": b"x"})])
    layout = write_layout(tmp_path / "base-layout", tagged)
    job = image_import(team=default_team(), path=str(layout))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return image_lookup(BASE)


@pytest.fixture
def box(base: Image) -> Container:
    return container_create(team=default_team(), image=BASE, name="box")


def url(name: str, container: Container | None = None, **query: str) -> str:
    args = [container.name] if container else []
    path = reverse(f"containers:{name}", args=args)
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return path


def messages_of(response: object) -> list[str]:
    return [str(m) for m in response.context["messages"]]  # type: ignore[attr-defined]


def diff_of(container: Container) -> set[tuple[str, str]]:
    return {(c.kind, c.path) for c in container_diff(container=container)}


# -- list and create ---------------------------------------------------------------------------


def test_empty_list_says_what_to_do(admin_client: Client) -> None:
    response = admin_client.get(url("list"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "No containers yet" in html
    assert 'action="/containers/-/create/"' in html


def test_list_shows_containers(admin_client: Client, box: Container) -> None:
    container_write_file(container=box, path="/root/note", data=b"x" * 1234)
    html = admin_client.get(url("list")).content.decode()
    assert "box" in html
    assert box.short_id in html
    assert box.container_id not in html
    assert "localhost/base:1" in html
    assert reverse("images:detail", args=[box.image_id]) in html
    assert 'title="1234 bytes"' in html  # the writable layer's size


def test_create_from_a_reference_and_from_a_number(admin_client: Client, base: Image) -> None:
    response = admin_client.post(url("create"), {"image": BASE, "name": "made"})
    assert response.status_code == 302
    assert response["Location"] == url("detail", Container.objects.get(name="made"))
    response = admin_client.post(url("create"), {"image": str(base.pk), "name": ""})
    assert response.status_code == 302
    assert Container.objects.filter(image=base).count() == 2


def test_create_errors_are_shown_on_the_form(admin_client: Client, box: Container) -> None:
    missing = admin_client.post(url("create"), {"image": "localhost/nope:1", "name": "x"})
    assert missing.status_code == 400
    assert "no such image" in missing.content.decode()
    taken = admin_client.post(url("create"), {"image": BASE, "name": "box"})
    assert taken.status_code == 400
    assert "already in use" in taken.content.decode()
    bad = admin_client.post(url("create"), {"image": BASE, "name": "-bad name"})
    assert bad.status_code == 400
    assert "invalid container name" in bad.content.decode()
    assert Container.objects.count() == 1


def test_create_page_takes_the_image_from_the_query(admin_client: Client, base: Image) -> None:
    html = admin_client.get(url("create") + f"?image={base.pk}").content.decode()
    assert f'value="{base.pk}"' in html


# -- a container's page ------------------------------------------------------------------------


def test_detail_draws_the_stack_and_the_diff(admin_client: Client, box: Container) -> None:
    container_write_file(container=box, path="/root/greeting", data=b"hello\n")
    response = admin_client.get(url("detail", box))
    assert response.status_code == 200
    html = response.content.decode()
    layer = box.image.image_layers.get().layer
    assert f'data-layer="{layer.chain_id.split(":")[1]}"' in html
    assert reverse("layers:detail", args=[layer.chain_id.split(":")[1]]) in html
    changes = re.search(r'data-figure="writable_changes">(.*?)</span>\s*</li>', html, re.S)
    assert changes
    assert re.sub(r"<[^>]+>", "", changes.group(1)).split() == ["A", "1", "C", "1", "D", "0"]
    assert "used by this image only" in html
    assert "<code>/root/greeting</code>" in html
    # by ID prefix too, as docker accepts it
    assert admin_client.get(reverse("containers:detail", args=[box.short_id])).status_code == 200


def test_write_upload_mkdir_delete_through_the_page(admin_client: Client, box: Container) -> None:
    written = admin_client.post(
        url("write", box), {"path": "/root/notes.txt", "content": "one\r\ntwo\r\n"}
    )
    assert written.status_code == 302
    assert get_fs_text(box, "/root/notes.txt") == "one\ntwo\n"

    upload = SimpleUploadedFile("blob.bin", b"\x00\x01binary")
    uploaded = admin_client.post(url("upload", box), {"directory": "/tmp", "file": upload})
    assert uploaded.status_code == 302
    made = admin_client.post(url("mkdir", box), {"path": "/srv/app/data", "parents": "on"})
    assert made.status_code == 302
    deleted = admin_client.post(url("delete_path", box), {"path": "/etc/os-release"})
    assert deleted.status_code == 302

    assert {
        ("A", "/root/notes.txt"),
        ("A", "/tmp/blob.bin"),
        ("A", "/srv/app/data"),
        ("D", "/etc/os-release"),
    } <= diff_of(box)
    html = admin_client.get(url("detail", box)).content.decode()
    for line in ("/root/notes.txt", "/tmp/blob.bin", "/srv/app/data", "/etc/os-release"):
        assert f"<code>{line}</code>" in html

    page = admin_client.get(url("file", box, path="/root/notes.txt")).content.decode()
    assert "one\ntwo" in page
    download = admin_client.get(url("file", box, path="/tmp/blob.bin", download="1"))
    assert b"".join(download.streaming_content) == b"\x00\x01binary"  # type: ignore[attr-defined]
    binary = admin_client.get(url("file", box, path="/tmp/blob.bin")).content.decode()
    assert "A binary file" in binary


def get_fs_text(container: Container, path: str) -> str:
    from layerhub.containers.services import container_fs

    return container_fs(container).view.read_bytes(path).decode()


def test_file_browser_lists_a_directory(admin_client: Client, box: Container) -> None:
    container_write_file(container=box, path="/etc/extra", data=b"x")
    html = admin_client.get(url("detail", box, path="/etc")).content.decode()
    assert "os-release" in html
    assert re.search(r'<td class="mark"[^>]*>W</td>\s*<td class="name">\s*<a[^>]*>extra<', html)
    # a file's path goes to the file page
    response = admin_client.get(url("detail", box, path="/etc/passwd"))
    assert response.status_code == 302
    assert "/file/" in response["Location"]


def test_user_errors_are_messages(admin_client: Client, box: Container) -> None:
    not_empty = admin_client.post(url("delete_path", box), {"path": "/etc"}, follow=True)
    assert "directory not empty" in " ".join(messages_of(not_empty))
    assert admin_client.post(url("delete_path", box), {"path": "/etc", "recursive": "on"})
    assert ("D", "/etc") in diff_of(box)

    missing = admin_client.post(url("delete_path", box), {"path": "/nope"}, follow=True)
    assert "no such file" in " ".join(messages_of(missing))
    escape = admin_client.post(
        url("write", box), {"path": "/../../../tmp/x", "content": "x"}, follow=True
    )
    assert escape.status_code == 200
    assert "must not contain" in " ".join(messages_of(escape))
    exists = admin_client.post(url("mkdir", box), {"path": "/bin"}, follow=True)
    assert "file exists" in " ".join(messages_of(exists))
    invalid = admin_client.post(url("mkdir", box), {"path": ""})
    assert invalid.status_code == 400
    assert "This field is required" in invalid.content.decode()


def test_bad_paths_are_error_pages(admin_client: Client, box: Container) -> None:
    for bad in ("../etc", "/a/../../b", "/a\x00"):
        response = admin_client.get(url("detail", box), {"path": bad})
        assert response.status_code == 400, bad
        assert b"Traceback" not in response.content
    assert admin_client.get(url("file", box), {"path": "/nope"}).status_code == 404
    assert admin_client.get(reverse("containers:detail", args=["nobody"])).status_code == 404


# -- run, commit, remove -----------------------------------------------------------------------


def test_exec_runs_a_command_and_shows_its_output(admin_client: Client, box: Container) -> None:
    assert runtime_unavailable_reason(get_store().whiteouts) is None, "runc runs here as root"
    response = admin_client.post(
        url("exec", box),
        {"command": "sh -c 'echo hello from box; echo oops >&2; exit 3'", "timeout": "30"},
        HTTP_HX_REQUEST="true",
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html  # the fragment alone
    assert re.search(r'data-figure="exit_code"[^>]*>3<', html)
    assert re.search(r'data-stream="stdout">hello from box\n<', html)
    assert re.search(r'data-stream="stderr">oops\n<', html)

    # without htmx: the page after a redirect, once
    redirected = admin_client.post(
        url("exec", box), {"command": "echo again", "timeout": "30"}, follow=True
    )
    page = redirected.content.decode()
    assert re.search(r'data-stream="stdout">again\n<', page)
    assert re.search(r'data-figure="exit_code"[^>]*>0<', page)
    assert 'data-stream="stdout"' not in admin_client.get(url("detail", box)).content.decode()
    box.refresh_from_db()
    assert (box.last_command, box.last_exit_code) == (["echo", "again"], 0)


def test_exec_form_errors(admin_client: Client, box: Container) -> None:
    bad = admin_client.post(
        url("exec", box), {"command": "echo 'unclosed", "timeout": "5"}, HTTP_HX_REQUEST="true"
    )
    assert "cannot split the command line" in bad.content.decode()
    missing = admin_client.post(
        url("exec", box), {"command": "/no/such/cmd", "timeout": "5"}, HTTP_HX_REQUEST="true"
    )
    assert re.search(r'data-figure="exit_code"[^>]*>127<', missing.content.decode())


def test_exec_disabled_where_commands_cannot_run(
    admin_client: Client, box: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "layerhub.containers.files.runtime_unavailable_reason", lambda fmt: "no runc here"
    )
    html = admin_client.get(url("detail", box)).content.decode()
    assert "Commands cannot run here: no runc here" in html
    assert "<fieldset disabled>" in html


def test_commit_starts_a_job(admin_client: Client, box: Container) -> None:
    container_write_file(container=box, path="/root/greeting", data=b"hello\n")
    response = admin_client.post(
        url("commit", box),
        {
            "repository": "localhost/committed:2",
            "message": "greet",
            "author": "me",
            "changes": 'ENV A=1\nCMD ["sh"]',
        },
    )
    job = Job.objects.get(kind=Job.Kind.COMMIT)
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    committed = image_lookup("localhost/committed:2")
    assert committed.image_layers.count() == 2


def test_commit_refuses_a_bad_change(admin_client: Client, box: Container) -> None:
    response = admin_client.post(url("commit", box), {"changes": "RUN rm -rf /"})
    assert response.status_code == 400
    assert "RUN" in response.content.decode()
    assert not Job.objects.filter(kind=Job.Kind.COMMIT).exists()


def test_rm_removes_the_container(admin_client: Client, box: Container) -> None:
    upper = get_store().containers / box.container_id
    assert upper.is_dir()
    assert admin_client.get(url("rm", box)).status_code == 405
    response = admin_client.post(url("rm", box), {"confirm": "on"})
    assert response.status_code == 302
    assert response["Location"] == url("list")
    assert not Container.objects.exists()
    assert not upper.exists()


def test_anonymous_is_sent_to_sign_in(client: Client, box: Container) -> None:
    for path in (url("list"), url("detail", box), url("create")):
        response = client.get(path)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    response = client.post(url("rm", box))
    assert response.status_code == 302
    assert Container.objects.exists()


def test_stack_names_the_images_that_share_a_layer(
    admin_client: Client, tmp_path: Path, django_assert_max_num_queries: object
) -> None:
    import_busybox(tmp_path, children=4)
    box = container_create(team=default_team(), image="localhost/child:0", name="kid")
    with django_assert_max_num_queries(13):  # type: ignore[operator]
        html = admin_client.get(url("detail", box)).content.decode()
    base_layer = image_lookup(BASE).image_layers.get().layer
    block = re.search(rf'data-layer="{base_layer.chain_id.split(":")[1]}">(.*?)</li>', html, re.S)
    assert block
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", block.group(1)))
    # 5 images use the base; 3 others are named and the layer page has the rest
    named = re.search(r"shared by 5 images: this one, (.*) and more", text)
    assert named
    others = named.group(1).split(", ")
    assert len(others) == 3
    assert set(others) <= {BASE, "localhost/child:1", "localhost/child:2", "localhost/child:3"}
    assert "used by this image only" in html  # the child's own layer


def test_pages_queries_do_not_grow(
    admin_client: Client, base: Image, django_assert_max_num_queries: object
) -> None:
    for i in range(3):
        container_create(team=default_team(), image=BASE, name=f"c{i}")
    # the create form asks which teams the user may create containers in: one query
    with django_assert_max_num_queries(7):  # type: ignore[operator]
        admin_client.get(url("list"))
    for i in range(3, 12):
        container_create(team=default_team(), image=BASE, name=f"c{i}")
    with django_assert_max_num_queries(7):  # type: ignore[operator]
        html = admin_client.get(url("list")).content.decode()
    assert html.count('href="/containers/c') == 12
    with django_assert_max_num_queries(13):  # type: ignore[operator]
        admin_client.get(url("detail", Container.objects.get(name="c0")))


def test_list_paginates_with_a_clamped_page_size(admin_client: Client, base: Image) -> None:
    for i in range(12):
        container_create(team=default_team(), image=BASE, name=f"c{i:02}")
    first = admin_client.get(url("list"), {"per_page": "1"}).content.decode()
    assert first.count('href="/containers/c') == 10  # clamped to the smallest page size
    second = admin_client.get(url("list"), {"per_page": "1", "page": "2"}).content.decode()
    assert second.count('href="/containers/c') == 2
    assert "page 2 of 2" in second


def test_upload_past_the_cap_is_refused(
    admin_client: Client, box: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("layerhub.containers.views.MAX_UPLOAD_BYTES", 1000)
    monkeypatch.setattr("layerhub.containers.views.UPLOAD_OVERHEAD", 0)
    monkeypatch.setattr("layerhub.containers.forms.MAX_UPLOAD_BYTES", 1000)
    big = SimpleUploadedFile("big.bin", b"x" * 5000)
    response = admin_client.post(
        url("upload", box), {"directory": "/tmp", "file": big}, follow=True
    )
    assert "the upload is larger than" in " ".join(messages_of(response))
    assert ("A", "/tmp/big.bin") not in diff_of(box)


def test_upload_form_checks_the_size_and_csrf(
    box: Container, monkeypatch: pytest.MonkeyPatch, admin_user: object
) -> None:
    monkeypatch.setattr("layerhub.containers.forms.MAX_UPLOAD_BYTES", 1000)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)  # type: ignore[arg-type]
    small = SimpleUploadedFile("a.txt", b"a")
    assert client.post(url("upload", box), {"directory": "/tmp", "file": small}).status_code == 403
    csrf = Client()
    csrf.force_login(admin_user)  # type: ignore[arg-type]
    over = SimpleUploadedFile("b.bin", b"x" * 1500)  # past the form's cap, within the request's
    response = csrf.post(url("upload", box), {"directory": "/tmp", "file": over})
    assert response.status_code == 400
    assert "larger than" in response.content.decode()


def test_exec_disabled_on_a_store_that_keeps_oci_whiteouts(
    admin_client: Client, layerhub_store: Path, tmp_path: Path
) -> None:
    Store(layerhub_store, "oci")  # no kernel overlay over these snapshots: no commands
    box = container_create(
        team=default_team(), image=import_busybox(tmp_path).manifest_digest, name="portable"
    )
    html = admin_client.get(url("detail", box)).content.decode()
    assert "Commands cannot run here:" in html
    assert "this store: oci" in html
    assert "<fieldset disabled>" in html
    # the rest of the page works on this store too
    written = admin_client.post(url("write", box), {"path": "/root/x", "content": "x"})
    assert written.status_code == 302
    assert ("A", "/root/x") in diff_of(box)
    refused = admin_client.post(
        url("exec", box), {"command": "echo hi", "timeout": "5"}, HTTP_HX_REQUEST="true"
    )
    assert "this store: oci" in refused.content.decode()


def test_a_write_into_a_missing_directory_is_a_message_on_a_page_that_exists(
    admin_client: Client, box: Container
) -> None:
    response = admin_client.post(
        url("write", box), {"path": "/srv/deep/x.txt", "content": "x"}, follow=True
    )
    assert response.status_code == 200  # the nearest directory that exists, not a 404
    assert messages_of(response)
    assert response.redirect_chain[-1][0].endswith("#files")
