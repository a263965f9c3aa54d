"""The overview (the dashboard's home page) and the health check."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import OperationalError, connection
from django.db.models import QuerySet
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.dashboard.selectors import images_with_most_unique_bytes, most_shared_layers
from layerhub.engine.store import Store
from layerhub.images.layer_counts import image_layers_add, layer_image_count_mismatches
from layerhub.images.models import Blob, Image, ImageLayer, Layer, Repository, Tag
from layerhub.images.services.transfer import image_remove
from layerhub.images.sizes import images_with_sizes, store_totals
from layerhub.jobs.models import Job
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db


def figure(html: str, name: str) -> str:
    match = re.search(rf'data-figure="{name}"[^>]*>([^<]*)<', html)
    assert match, f"no {name} on the page"
    return match.group(1).strip()


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(name: str, unpacked: int, size: int, parent: Layer | None = None) -> Layer:
    # the blob record a pull leaves beside the layer row (the physical total sums these)
    Blob.objects.create(digest=digest(f"blob {name}"), size=size, kind=Blob.Kind.LAYER)
    return Layer.objects.create(
        chain_id=digest(f"chain {name}"),
        parent=parent,
        digest=digest(f"blob {name}"),
        diff_id=digest(f"diff {name}"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=size,
        unpacked_size=unpacked,
        file_count=1,
        unpacked_at=timezone.now(),
    )


def image(name: str, layers: list[Layer], tag: str | None = None) -> Image:
    img = Image.objects.create(
        manifest_digest=digest(f"manifest {name}"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest(f"config {name}"),
        config={},
    )
    image_layers_add(image=img, layers=layers)
    if tag:
        repo, _ = Repository.objects.get_or_create(
            team=default_team(), registry="docker.io", name="library/debian"
        )
        Tag.objects.create(repository=repo, name=tag, image=img)
    return img


def test_home_when_the_catalog_is_empty(admin_client: Client, layerhub_store: Path) -> None:
    response = admin_client.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<title>layerhub</title>" in html
    assert "No images yet: pull one" in html
    assert reverse("jobs:pull") in html
    assert figure(html, "images") == "0"
    assert figure(html, "containers") == "0"
    assert figure(html, "running_jobs") == "0"
    assert "No jobs yet" in html
    assert "htmx.min.js" in html


def test_home_shows_counts_savings_sharing_and_jobs(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # never a walk of the store: the overview reads recorded sizes
    monkeypatch.setattr(Store, "usage", lambda self: pytest.fail("the overview walked the store"))
    base = layer("base", unpacked=100_000, size=40_000)
    mid = layer("mid", unpacked=10_000, size=4_000, parent=base)
    top1 = layer("top1", unpacked=7_000, size=3_000, parent=mid)
    top2 = layer("top2", unpacked=2_000, size=1_000, parent=mid)
    lone = layer("lone", unpacked=50_000, size=20_000)
    one = image("one", [base, mid, top1], tag="12")
    two = image("two", [base, mid, top2], tag="13")
    three = image("three", [base])
    alone = image("alone", [lone], tag="lone")
    running = Job.objects.create(
        kind=Job.Kind.PULL, state=Job.State.RUNNING, reference="docker.io/library/debian:14"
    )
    failed = Job.objects.create(
        kind=Job.Kind.UNPACK,
        state=Job.State.FAILED,
        reference="docker.io/library/debian:12",
        error="disk full",
    )

    response = admin_client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    totals = store_totals()
    assert figure(html, "images") == "4"
    assert figure(html, "layers") == "5"
    assert figure(html, "blobs") == "5"
    assert figure(html, "running_jobs") == "1"
    assert figure(html, "logical_bytes") == human_size(totals.logical_bytes)
    assert figure(html, "physical_bytes") == human_size(totals.physical_bytes)
    assert figure(html, "savings_bytes") == human_size(totals.savings_bytes)
    assert totals.savings_bytes == 2 * (100_000 + 40_000) + (10_000 + 4_000)
    assert figure(html, "savings_percent") == f"{totals.savings_percent:.1f}%"
    assert f'title="saved {totals.savings_bytes} bytes"' in html

    # most shared first: base under three images saves 2 x its size, then mid under two
    shared = re.findall(
        r'<tr data-layer="([^"]+)">.*?data-users>(\d+)<.*?data-saved="(\d+)"', html, re.S
    )
    assert shared == [(base.chain_id, "3", "200000"), (mid.chain_id, "2", "10000")]
    assert reverse("layers:detail", args=[base.chain_id.removeprefix("sha256:")]) in html

    # most unique bytes: alone (50,000), one (7,000), two (2,000); three has none
    unique = html.split('id="unique-title"', 1)[1].split("</section>", 1)[0]
    order = re.findall(r'data-image="(\d+)"', unique)
    assert order == [str(alone.pk), str(one.pk), str(two.pk)]
    assert str(three.pk) not in order
    assert "debian:lone" in unique
    assert "debian:12" in unique

    jobs = html.split('id="jobs-title"', 1)[1]
    assert jobs.index(f'data-job="{running.pk}"') < jobs.index(f'data-job="{failed.pk}"')
    assert reverse("jobs:detail", args=[running.pk]) in jobs
    assert "disk full" in jobs


def test_healthz_ok(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "store": "ok"}


def test_healthz_reports_a_broken_store(client: Client, settings: Settings, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    settings.LAYERHUB_STORE = not_a_dir

    response = client.get("/healthz")

    assert response.status_code == 503
    body = json.loads(response.content)
    assert body["database"] == "ok"
    assert body["store"].startswith("error")


def test_healthz_reports_a_broken_database(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(connection, "cursor", refuse)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json() == {
        "database": "error: OperationalError: connection refused",
        "store": "ok",
    }


def test_container_layers_and_tmp_are_shown_apart_measured(
    admin_client: Client, layerhub_store: Path
) -> None:
    store = get_store()
    leftover = store.tmp / "blob-leftover"
    leftover.write_bytes(b"x" * 3_000)
    html = admin_client.get("/").content.decode()
    assert figure(html, "tmp_bytes") == human_size(3_000)
    assert 'title="3000 bytes"' in html
    assert figure(html, "container_bytes") == human_size(0)


def test_staff_start_a_store_verify_and_read_its_report(
    admin_client: Client,
    client: Client,
    django_user_model: type[User],
    settings: Settings,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    orphan = get_store().blobs.put_bytes(b"nobody records me")  # a blob no row knows
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("dashboard:verify"))
    job = Job.objects.get(kind=Job.Kind.VERIFY)
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    job.refresh_from_db()
    assert job.state == Job.State.FAILED  # the store and the catalog disagree
    page = admin_client.get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert 'data-report="1"' in page
    assert orphan.digest.removeprefix("sha256:") in page
    assert "orphan" in page

    # a signed-in user who is not staff may not start one
    django_user_model.objects.create_user("bob", password="a long passphrase")
    client.login(username="bob", password="a long passphrase")
    assert client.post(reverse("dashboard:verify")).status_code == 403
    assert Job.objects.filter(kind=Job.Kind.VERIFY).count() == 1


def test_the_overview_lists_count_only_the_images_they_are_given() -> None:
    base = layer("base", unpacked=100_000, size=40_000)
    one = image("one", [base], tag="1")
    image("two", [base], tag="2")
    assert [(s.layer.pk, s.users) for s in most_shared_layers(Image.objects.all())] == [
        (base.pk, 2)
    ]
    # a narrowed set (what restrict() gives a user who sees less) counts only its images
    assert most_shared_layers(Image.objects.filter(pk=one.pk)) == []
    assert [n.image.pk for n in images_with_most_unique_bytes(Image.objects.all())] == []


# -- the overview's lists against the sizes module ---------------------------------------------

TOP = 8


def unique_by_sizes(images: QuerySet[Image]) -> list[tuple[int, int]]:
    """(pk, UNIQUE SIZE) of the images with the most unique bytes, as ``images_with_sizes``
    computes them, the newest first among equals."""
    with_sizes: Any = images_with_sizes(images)  # annotations the type checker cannot see
    rows = with_sizes.values("pk", "unique_size")
    sizes = [(row["pk"], row["unique_size"]) for row in rows if row["unique_size"] > 0]
    return sorted(sizes, key=lambda t: (-t[1], -t[0]))[:TOP]


def shared_by_rows(images: QuerySet[Image]) -> list[tuple[int, int]]:
    """(layer pk, images) of the most shared layers, counted here from the image-layer rows."""
    users = Counter(ImageLayer.objects.filter(image__in=images).values_list("layer_id", flat=True))
    return sorted(((pk, n) for pk, n in users.items() if n > 1), key=lambda t: (-t[1], t[0]))[:TOP]


def assert_overview_agrees_with_sizes(client: Client, images: QuerySet[Image]) -> None:
    unique = images_with_most_unique_bytes(images)
    assert [(n.image.pk, n.image.unique_size) for n in unique] == unique_by_sizes(images)
    shared = most_shared_layers(images)
    assert [(s.layer.pk, s.users) for s in shared] == shared_by_rows(images)
    for item in shared:
        assert item.saved_bytes == (item.layer.unpacked_size or 0) * (item.users - 1)
    if images.query.where:
        return
    # the page shows the same lists, in the same order, with the same figures
    html = client.get("/").content.decode()
    section = html.split('id="unique-title"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r'data-image="(\d+)">.*?<td title="(\d+) bytes"', section, re.S)
    assert [(int(pk), int(n)) for pk, n in rows] == unique_by_sizes(images)
    rows = re.findall(r'<tr data-layer="([^"]+)">.*?data-users>(\d+)<', html, re.S)
    chains = dict(Layer.objects.values_list("pk", "chain_id"))
    assert rows == [(chains[pk], str(n)) for pk, n in shared_by_rows(images)]


def test_the_overview_lists_equal_the_sizes_modules_figures(admin_client: Client) -> None:
    # a seeded catalog, and beside it images whose figures sort to the top: ties, a layer
    # not unpacked yet, a layer of 0 bytes, and a stack two images share above a common base
    call_command("seed_demo", images=150, seed=5, stdout=StringIO())
    huge = 10**12
    base = layer("base", unpacked=huge, size=1)
    mid = layer("mid", unpacked=3 * huge, size=1, parent=base)
    pending = layer("pending", unpacked=0, size=1, parent=base)
    Layer.objects.filter(pk=pending.pk).update(unpacked_size=None, unpacked_at=None)
    empty = layer("empty", unpacked=0, size=1, parent=base)
    tie1 = layer("tie1", unpacked=2 * huge, size=1, parent=base)
    tie2 = layer("tie2", unpacked=2 * huge, size=1, parent=base)
    top_p = layer("top p", unpacked=huge // 2, size=1, parent=mid)
    top_q = layer("top q", unpacked=huge // 4, size=1, parent=mid)
    made = [
        image("pending", [base, pending]),
        image("empty", [base, empty]),
        image("tie one", [base, tie1], tag="tie1"),
        image("tie two", [base, tie2], tag="tie2"),
        image("p", [base, mid, top_p], tag="p"),
        image("q", [base, mid, top_q], tag="q"),
    ]
    p, q = made[-2:]
    everything = Image.objects.all()
    assert_overview_agrees_with_sizes(admin_client, everything)
    listed = [n.image.pk for n in images_with_most_unique_bytes(everything)]
    # equal unique bytes: the newest first; then p and q above every seeded image
    assert listed[:4] == [made[3].pk, made[2].pk, p.pk, q.pk]
    assert made[0].pk not in listed  # its only layer of its own is not unpacked: 0 bytes
    assert made[1].pk not in listed
    # a narrowed set (what restrict() gives a user who sees less): uniqueness is still the
    # catalog's, the lists hold only its images
    narrowed = Image.objects.filter(pk__in=[made[2].pk, p.pk, q.pk])
    assert_overview_agrees_with_sizes(admin_client, narrowed)

    # rmi p: the stack p and q shared is q's alone now, and the lists follow
    image_remove(image=p.config_digest.removeprefix("sha256:"))
    assert layer_image_count_mismatches() == []
    assert_overview_agrees_with_sizes(admin_client, Image.objects.all())
    (named,) = [n for n in images_with_most_unique_bytes(Image.objects.all()) if n.image.pk == q.pk]
    assert named.image.unique_size == 3 * huge + huge // 4
    # and seeded images removed from families of every size
    for pk in (
        Image.objects.exclude(pk__in=[m.pk for m in made])
        .order_by("?")
        .values_list("pk", flat=True)[:20]
    ):
        image_remove(image=Image.objects.get(pk=pk).config_digest.removeprefix("sha256:"))
    assert layer_image_count_mismatches() == []
    assert_overview_agrees_with_sizes(admin_client, Image.objects.all())
