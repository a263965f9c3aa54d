"""Files stored twice in the browser: the report page, the staff dedup button (a dry run
first, then the run from its job page) and the figures on the overview."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.engine.fsutil import tree_usage
from layerhub.images.file_index import layer_files_from_snapshot
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.models import Image, Layer, Repository, Tag
from layerhub.images.sizes import store_totals
from layerhub.jobs.models import Job
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db

MTIME = 1_700_000_000


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _build(tag: str, date: bytes) -> Image:
    """An image of one layer whose snapshot holds the distribution's files and its date."""
    store = get_store()
    chain = _digest(f"chain {tag}")
    tree = store.snapshots.path(chain)
    files = {f"usr/lib/lib{i}.so": bytes([i]) * (10_000 + i) for i in range(5)}
    files["etc/build-date"] = date
    for path, data in files.items():
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (MTIME, MTIME))
    size, count = tree_usage(tree)
    layer = Layer.objects.create(
        chain_id=chain,
        digest=_digest(f"blob {tag}"),
        diff_id=_digest(f"diff {tag}"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=1,
        unpacked_size=size,
        file_count=count,
        unpacked_at=timezone.now(),
    )
    layer_files_from_snapshot(layer, tree, store.whiteouts)
    team = default_team()
    image = Image.objects.create(
        manifest_digest=_digest(f"manifest {tag}"),
        config_digest=_digest(f"config {tag}"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config={},
        team=team,
    )
    image_layers_add(image=image, layers=[layer])
    repository, _ = Repository.objects.get_or_create(
        registry="docker.io", name="library/debian", defaults={"team": team}
    )
    Tag.objects.create(repository=repository, name=tag, image=image)
    return image


def test_the_report_page_and_the_staff_dedup_button(
    admin_client: Client,
    client: Client,
    django_user_model: type[User],
    settings: Settings,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    _build("bookworm-20261101", b"2026-11-01\n")
    _build("bookworm-20261115", b"2026-11-15\n")
    shared = sum(10_000 + i for i in range(5))

    page = admin_client.get(reverse("dashboard:duplicates")).content.decode()
    assert (
        "debian:bookworm-20261101 and debian:bookworm-20261115 share no layer but "
        f"83% of their files ({human_size(shared)})" in page
    )
    assert f'data-figure="stored_twice_bytes" title="{shared} bytes"' in page
    assert 'data-action="dedup-preview"' in page
    assert 'data-action="dedup-preview"' in admin_client.get("/").content.decode()
    before = store_totals()

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("dashboard:dedup"), {"dry_run": "1"})
    preview = Job.objects.get(kind=Job.Kind.DEDUP)
    assert response["Location"] == reverse("jobs:detail", args=[preview.pk])
    preview.refresh_from_db()
    assert preview.state == Job.State.SUCCEEDED, preview.error
    assert store_totals() == before  # a preview links nothing
    page = admin_client.get(reverse("jobs:detail", args=[preview.pk])).content.decode()
    assert f'data-dedup-bytes="{shared}"' in page
    assert "Would free" in page
    assert 'data-action="dedup-run"' in page
    assert "Linking 5/5 shared contents" in page  # the job's progress line

    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("dashboard:dedup"))
    run = Job.objects.filter(kind=Job.Kind.DEDUP).exclude(pk=preview.pk).get()
    run.refresh_from_db()
    assert run.state == Job.State.SUCCEEDED, run.error
    after = store_totals()
    assert after.physical_bytes == before.physical_bytes - shared
    assert after.dedup_bytes == shared
    assert after.logical_bytes == before.logical_bytes
    home = admin_client.get("/").content.decode()
    assert f'data-figure="dedup_bytes" title="{shared} bytes"' in home
    page = admin_client.get(reverse("dashboard:duplicates")).content.decode()
    assert 'data-figure="stored_twice_bytes" title="0 bytes"' in page

    # a user who is not staff sees the report of their images, no button, and may not start
    django_user_model.objects.create_user("bob", password="a long passphrase")
    client.login(username="bob", password="a long passphrase")
    page = client.get(reverse("dashboard:duplicates")).content.decode()
    assert 'data-action="dedup-preview"' not in page
    assert "stored_twice_bytes" not in page
    assert client.post(reverse("dashboard:dedup"), {"dry_run": "1"}).status_code == 403
    assert admin_client.get(reverse("dashboard:dedup")).status_code == 405
