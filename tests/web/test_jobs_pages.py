"""The jobs pages: list, live detail, cancel, the pull, push and import forms, download."""

from __future__ import annotations

import io
import re
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import kombu.exceptions
import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries, Settings

from layerhub.images.models import Image
from layerhub.images.services import image_import_run
from layerhub.jobs.models import Job
from tests.support.oci import Image as OciImage
from tests.support.oci import make_layer, write_layout
from workers.celery import app

if TYPE_CHECKING:  # the stubs' name for what the test client returns
    from django.test.client import _MonkeyPatchedWSGIResponse

pytestmark = pytest.mark.django_db

PULLING = [
    {"digest": "sha256:" + "a" * 64, "status": "Pull complete", "current": 900, "total": 900},
    {
        "digest": "sha256:" + "b" * 64,
        "status": "Downloading",
        "current": 1_500_000,
        "total": 3_000_000,
    },
    {"digest": "sha256:" + "c" * 64, "status": "Waiting", "current": 0, "total": 1000},
]


def make_job(**fields: object) -> Job:
    defaults: dict[str, object] = {
        "kind": Job.Kind.PULL,
        "reference": "docker.io/library/debian:12",
    }
    return Job.objects.create(**{**defaults, **fields})


def running(**fields: object) -> Job:
    now = timezone.now()
    base: dict[str, object] = {"started_at": now, "heartbeat_at": now, "attempts": 1}
    return make_job(state=Job.State.RUNNING, **{**base, **fields})


def htmx(client: Client, url: str, *, restore: bool = False) -> _MonkeyPatchedWSGIResponse:
    headers = {"HX-Request": "true"}
    if restore:
        headers["HX-History-Restore-Request"] = "true"
    return client.get(url, headers=headers)


def trigger_of(html: str) -> str | None:
    panel = re.search(r'<section id="job-panel"[^>]*>', html)
    assert panel, html
    found = re.search(r'hx-trigger="([^"]*)"', panel.group(0))
    return found.group(1) if found else None


# -- the list ---------------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in(client: Client) -> None:
    for url in ("/jobs/", "/jobs/1/", "/jobs/pull/", "/jobs/import/", "/jobs/push/"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert "/login/" in response["Location"]


def test_empty_list_says_what_to_do(admin_client: Client) -> None:
    response = admin_client.get("/jobs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No jobs yet" in html
    assert 'href="/jobs/pull/"' in html


def test_list_is_newest_first_with_progress_and_who(admin_client: Client, admin_user: User) -> None:
    old = make_job(
        state=Job.State.SUCCEEDED,
        created_at=timezone.now() - timedelta(hours=2),
        reference="docker.io/library/old:1",
    )
    new = running(progress=PULLING, created_by=admin_user, reference="docker.io/library/new:2")
    html = admin_client.get("/jobs/").content.decode()
    assert html.index("new:2") < html.index("old:1")
    # bytes done / in all across layers: 900 + 1.5MB of 900 + 3MB + 1000
    assert 'title="1500900 of 3001900 bytes"' in html
    assert "1.5MB / 3MB" in html
    assert admin_user.username in html
    assert f'href="/jobs/{new.pk}/"' in html
    assert f'href="/jobs/{old.pk}/"' in html
    assert 'class="badge state-running"' in html
    # a running job on the page: the table refreshes itself, while the tab is visible
    assert "every 3s [document.visibilityState=='visible']" in html


def test_list_filters_by_kind_and_state(admin_client: Client) -> None:
    make_job(kind=Job.Kind.PULL, state=Job.State.FAILED, reference="r/pull-failed")
    make_job(kind=Job.Kind.PUSH, state=Job.State.FAILED, reference="r/push-failed")
    make_job(kind=Job.Kind.PUSH, state=Job.State.SUCCEEDED, reference="r/push-ok")
    html = admin_client.get("/jobs/?kind=push&state=failed").content.decode()
    assert "r/push-failed" in html
    assert "r/pull-failed" not in html
    assert "r/push-ok" not in html
    html = admin_client.get("/jobs/?kind=unpack").content.decode()
    assert "No job matches these filters" in html
    # an unknown value is ignored, not an error
    assert admin_client.get("/jobs/?state=bogus").status_code == 200


def test_list_fragment_for_htmx_and_whole_page_otherwise(admin_client: Client) -> None:
    make_job(reference="r/one")
    fragment = htmx(admin_client, "/jobs/?kind=pull").content.decode()
    assert fragment.lstrip().startswith('<div id="jobs-table"')
    assert "<html" not in fragment
    assert "r/one" in fragment
    # a boosted link or a history restore wants the whole page
    page = htmx(admin_client, "/jobs/", restore=True).content.decode()
    assert "<html" in page


def test_list_paginates_with_bounded_queries(
    admin_client: Client, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    for i in range(60):
        running(reference=f"r/job-{i:02d}", progress=PULLING)
    with django_assert_max_num_queries(8):
        response = admin_client.get("/jobs/")
    html = response.content.decode()
    assert html.count("<tr data-job=") == 25
    assert "Page 1 of 3" in html
    page3 = admin_client.get("/jobs/?page=3&per_page=25").content.decode()
    assert page3.count("<tr data-job=") == 10
    # the page size is clamped
    assert admin_client.get("/jobs/?per_page=100000").content.decode().count("<tr data-job=") == 60


# -- the detail -------------------------------------------------------------------------------


def test_running_job_polls_and_shows_layers_as_the_cli_prints_them(admin_client: Client) -> None:
    job = running(progress=PULLING)
    response = admin_client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    trigger = trigger_of(html)
    assert trigger is not None
    assert "load[document.visibilityState=='visible'] delay:0.5s" in trigger
    assert "every 2s [document.visibilityState=='visible']" in trigger
    assert "bbbbbbbbbbbb: Downloading 1.5MB/3MB" in html
    assert "aaaaaaaaaaaa: Pull complete" in html
    assert 'aria-valuenow="50"' in html  # the downloading layer's bar, half full
    assert 'aria-valuenow="100"' in html
    assert f'action="/jobs/{job.pk}/cancel/"' in html


def test_the_panel_stops_polling_once_the_job_ends(admin_client: Client) -> None:
    job = running(progress=PULLING)
    fragment = htmx(admin_client, f"/jobs/{job.pk}/").content.decode()
    assert fragment.lstrip().startswith('<section id="job-panel"')
    assert "<html" not in fragment
    assert trigger_of(fragment) is not None
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, finished_at=timezone.now())
    fragment = htmx(admin_client, f"/jobs/{job.pk}/").content.decode()
    assert trigger_of(fragment) is None
    assert "hx-get" not in fragment
    assert "Cancel" not in fragment


def test_a_pull_shows_its_unpack_and_polls_until_it_ends(admin_client: Client) -> None:
    pull = make_job(state=Job.State.SUCCEEDED, progress=PULLING[:1])
    unpack = running(
        kind=Job.Kind.UNPACK,
        parent=pull,
        progress=[
            {"digest": "sha256:" + "a" * 64, "status": "Extracting", "current": 10, "total": 900}
        ],
    )
    html = admin_client.get(f"/jobs/{pull.pk}/").content.decode()
    assert f'href="/jobs/{unpack.pk}/"' in html
    assert "Unpack job" in html
    assert "aaaaaaaaaaaa: Extracting 10B/900B" in html
    assert trigger_of(html) is not None  # the child still runs
    assert f'action="/jobs/{unpack.pk}/cancel/"' in html  # the running child can be stopped
    child_page = admin_client.get(f"/jobs/{unpack.pk}/").content.decode()
    assert f'href="/jobs/{pull.pk}/"' in child_page


def test_a_failed_job_shows_its_message(admin_client: Client) -> None:
    job = make_job(
        state=Job.State.FAILED,
        error="manifest for registry:5000/team/app:v9 not found: manifest unknown",
        finished_at=timezone.now(),
    )
    html = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "manifest for registry:5000/team/app:v9 not found" in html
    assert 'role="alert"' in html
    assert "Pull again" in html
    assert trigger_of(html) is None


def test_a_job_whose_worker_died_shows_it(admin_client: Client, settings: Settings) -> None:
    settings.LAYERHUB_JOB_DEAD_AFTER = 60
    stale = timezone.now() - timedelta(minutes=10)
    job = running(attempts=Job.max_attempts(), progress=PULLING)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stale)
    html = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "the worker running this job stopped 3 times" in html
    # one that may run again is queued again, and the page says why it waits
    again = running(progress=PULLING)
    Job.objects.filter(pk=again.pk).update(heartbeat_at=stale)
    html = admin_client.get(f"/jobs/{again.pk}/").content.decode()
    again.refresh_from_db()
    assert again.state == Job.State.QUEUED
    assert "The worker running this job stopped" in html
    assert "run 2 of 3" in html


def test_unknown_job_is_a_404_page(admin_client: Client) -> None:
    response = admin_client.get("/jobs/999999/")
    assert response.status_code == 404


def test_detail_queries_are_bounded(
    admin_client: Client, django_assert_max_num_queries: DjangoAssertNumQueries
) -> None:
    pull = running(progress=PULLING * 10)
    for _ in range(5):
        make_job(kind=Job.Kind.UNPACK, parent=pull, progress=PULLING)
    with django_assert_max_num_queries(8):
        assert admin_client.get(f"/jobs/{pull.pk}/").status_code == 200


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_a_queued_job(admin_client: Client) -> None:
    job = make_job()
    response = admin_client.post(f"/jobs/{job.pk}/cancel/")
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED
    html = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "cancelled" in html
    assert trigger_of(html) is None


def test_cancel_a_running_job_asks_it_to_stop(admin_client: Client) -> None:
    job = running()
    admin_client.post(f"/jobs/{job.pk}/cancel/")
    job.refresh_from_db()
    assert job.state == Job.State.RUNNING
    assert job.cancel_requested_at is not None
    html = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Stopping" in html
    assert "state-stopping" in html
    assert trigger_of(html) is not None  # still polls until the run has stopped
    assert f'action="/jobs/{job.pk}/cancel/"' not in html


def test_cancel_an_ended_job_says_so(admin_client: Client) -> None:
    job = make_job(state=Job.State.SUCCEEDED, finished_at=timezone.now())
    response = admin_client.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "has already ended" in response.content.decode()
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED


def test_cancel_is_post_only(admin_client: Client) -> None:
    job = make_job()
    assert admin_client.get(f"/jobs/{job.pk}/cancel/").status_code == 405
    job.refresh_from_db()
    assert job.state == Job.State.QUEUED


# -- pull and push forms ----------------------------------------------------------------------


def test_pull_form_renders(admin_client: Client) -> None:
    html = admin_client.get("/jobs/pull/?reference=debian:12").content.decode()
    assert 'value="debian:12"' in html
    assert "csrfmiddlewaretoken" in html


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"reference": "Not A Reference!"}, "reference", "invalid reference"),
        ({"reference": ""}, "reference", "This field is required"),
        ({"reference": "debian:12", "platform": "linux"}, "platform", "invalid platform"),
    ],
)
def test_pull_form_bad_input_shows_field_errors(
    admin_client: Client, data: dict[str, str], field: str, message: str
) -> None:
    response = admin_client.post("/jobs/pull/", data)
    assert response.status_code == 400
    html = response.content.decode()
    error = re.search(rf'<p class="field-error" id="id_{field}-error">([^<]*)</p>', html)
    assert error, html
    assert message.lower() in error.group(1).lower()
    assert not Job.objects.exists()


def test_pull_form_starts_a_job_and_goes_to_its_page(
    admin_client: Client, admin_user: User
) -> None:
    response = admin_client.post(
        "/jobs/pull/", {"reference": "debian:12", "platform": "linux/arm64/v8"}
    )
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.kind, job.reference) == (Job.Kind.PULL, "docker.io/library/debian:12")
    assert job.params["platform"] == "linux/arm64/v8"
    assert job.created_by == admin_user


@pytest.mark.django_db(transaction=True)
def test_broker_down_is_a_clear_503_not_a_500(
    admin_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:1")

    monkeypatch.setattr(app, "send_task", refuse)
    client = Client()
    client.force_login(admin_user)
    response = client.post("/jobs/pull/", {"reference": "debian:12"})
    assert response.status_code == 503
    html = response.content.decode()
    assert "does not answer" in html
    assert "Error 111" in html
    assert Job.objects.get().state == Job.State.FAILED


def test_push_form_bad_input_shows_field_errors(admin_client: Client) -> None:
    response = admin_client.post("/jobs/push/", {"image": "nosuch:1", "reference": "bad ref!"})
    assert response.status_code == 400
    html = response.content.decode()
    assert re.search(r'id="id_image-error">[^<]*nosuch', html), html
    assert 'id="id_reference-error"' in html
    assert not Job.objects.exists()


def test_push_form_queues_a_push(admin_client: Client) -> None:
    image = Image.objects.create(
        manifest_digest="sha256:" + "1" * 64, config_digest="sha256:" + "2" * 64, config={}
    )
    response = admin_client.post(
        "/jobs/push/", {"image": image.config_digest, "reference": "127.0.0.1:5000/team/x:1"}
    )
    job = Job.objects.get()
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.kind, job.image, job.reference) == (Job.Kind.PUSH, image, "127.0.0.1:5000/team/x:1")
    # an image given by ID needs a target
    response = admin_client.post("/jobs/push/", {"image": image.config_digest[7:19]})
    assert response.status_code == 400
    assert 'id="id_reference-error"' in response.content.decode()


# -- import -----------------------------------------------------------------------------------


@pytest.fixture
def uploads(settings: Settings, tmp_path: Path) -> Path:
    settings.LAYERHUB_UPLOAD_DIR = tmp_path / "uploads"
    return tmp_path / "uploads"


def oci_archive(tmp_path: Path) -> bytes:
    layer = make_layer({"etc": None, "etc/hello": b"hello\n"})
    layout = write_layout(tmp_path / "layout", {"v1": OciImage([layer])})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return buf.getvalue()


def test_import_form_renders_with_the_limit(admin_client: Client, settings: Settings) -> None:
    settings.LAYERHUB_UPLOAD_MAX_BYTES = 5_000_000
    html = admin_client.get("/jobs/import/").content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert "up to 5MB" in html


def test_upload_becomes_an_import_job_and_goes_when_it_ends(
    admin_client: Client, uploads: Path, tmp_path: Path
) -> None:
    data = oci_archive(tmp_path)
    response = admin_client.post("/jobs/import/", {"archive": SimpleUploadedFile("app.tar", data)})
    job = Job.objects.get()
    assert response.status_code == 302, response.content.decode()
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert job.kind == Job.Kind.IMPORT
    assert job.params["upload"] is True
    stored = Path(job.params["path"])
    assert stored.parent == uploads.resolve()
    assert stored.read_bytes() == data
    image_import_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    assert list(uploads.iterdir()) == []  # the upload went with its job


def test_upload_that_is_not_an_archive_is_refused(admin_client: Client, uploads: Path) -> None:
    response = admin_client.post(
        "/jobs/import/", {"archive": SimpleUploadedFile("notes.txt", b"not a tar at all" * 100)}
    )
    assert response.status_code == 400
    assert re.search(r'id="id_archive-error">not a tar archive', response.content.decode())
    assert not Job.objects.exists()
    assert list(uploads.iterdir()) == []


def test_upload_with_a_bad_platform_is_refused_and_not_kept(
    admin_client: Client, uploads: Path, tmp_path: Path
) -> None:
    response = admin_client.post(
        "/jobs/import/",
        {"archive": SimpleUploadedFile("app.tar", oci_archive(tmp_path)), "platform": "nope"},
    )
    assert response.status_code == 400
    assert 'id="id_platform-error"' in response.content.decode()
    assert list(uploads.iterdir()) == []


def test_upload_over_the_limit_is_refused(
    admin_client: Client, uploads: Path, settings: Settings, tmp_path: Path
) -> None:
    settings.LAYERHUB_UPLOAD_MAX_BYTES = 1000
    response = admin_client.post(
        "/jobs/import/", {"archive": SimpleUploadedFile("app.tar", oci_archive(tmp_path))}
    )
    assert response.status_code == 413
    assert "larger than the upload limit" in response.content.decode()
    assert not Job.objects.exists()
    assert not uploads.exists() or list(uploads.iterdir()) == []


def test_import_needs_the_csrf_token(admin_user: User, uploads: Path, tmp_path: Path) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(
        "/jobs/import/", {"archive": SimpleUploadedFile("app.tar", oci_archive(tmp_path))}
    )
    assert response.status_code == 403
    assert not Job.objects.exists()


# -- download ---------------------------------------------------------------------------------


@pytest.fixture
def exports(settings: Settings, tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    root.mkdir()
    settings.LAYERHUB_EXPORT_DIR = root
    return root


def export_job(path: Path, **fields: object) -> Job:
    return make_job(
        kind=Job.Kind.EXPORT,
        reference=str(path),
        params={"images": ["127.0.0.1:5000/team/app:v1"], "path": str(path), "format": "docker"},
        **fields,
    )


def test_download_a_saved_archive(admin_client: Client, exports: Path) -> None:
    archive = exports / "7.tar"
    archive.write_bytes(b"tar bytes" * 1000)
    job = export_job(archive, state=Job.State.SUCCEEDED, finished_at=timezone.now())
    response = admin_client.get(f"/jobs/{job.pk}/download/")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == archive.read_bytes()  # type: ignore[attr-defined]
    assert response["Content-Disposition"] == 'attachment; filename="app_v1.tar"'
    html = admin_client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/jobs/{job.pk}/download/"' in html


def test_download_is_404_until_done_and_once_gone(
    admin_client: Client, exports: Path, tmp_path: Path
) -> None:
    archive = exports / "8.tar"
    queued = export_job(archive)
    assert admin_client.get(f"/jobs/{queued.pk}/download/").status_code == 404
    done = export_job(archive, state=Job.State.SUCCEEDED)  # its file is gone
    assert admin_client.get(f"/jobs/{done.pk}/download/").status_code == 404
    elsewhere = tmp_path / "elsewhere.tar"  # saved by the CLI outside the export directory
    elsewhere.write_bytes(b"x")
    outside = export_job(elsewhere, state=Job.State.SUCCEEDED)
    assert admin_client.get(f"/jobs/{outside.pk}/download/").status_code == 404
    pull = make_job(state=Job.State.SUCCEEDED)
    assert admin_client.get(f"/jobs/{pull.pk}/download/").status_code == 404


def test_export_path_is_a_new_file_the_download_serves(admin_client: Client, exports: Path) -> None:
    from layerhub.jobs.services import export_path

    first, second = Path(export_path()), Path(export_path())
    assert first != second
    assert first.parent == exports
    first.write_bytes(b"archive")
    job = export_job(first, state=Job.State.SUCCEEDED)
    assert admin_client.get(f"/jobs/{job.pk}/download/").status_code == 200
