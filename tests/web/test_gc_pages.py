"""Garbage collection from the dashboard: staff preview a dry run from the overview, read
what it would delete on its job page, and start the collection from there."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from layerhub.core.humanize import human_size
from layerhub.core.store import get_store
from layerhub.jobs.models import Job

pytestmark = pytest.mark.django_db


def test_staff_preview_then_collect_and_nobody_else_may(
    admin_client: Client,
    client: Client,
    django_user_model: type[User],
    settings: Settings,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.CELERY_TASK_ALWAYS_EAGER = True
    store = get_store()
    orphan = store.blobs.put_bytes(b"x" * 2_500)  # a failed pull's blob: no row knows it
    home = admin_client.get("/").content.decode()
    assert reverse("dashboard:gc") in home
    assert 'data-action="gc-preview"' in home

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("dashboard:gc"), {"dry_run": "1"})
    preview = Job.objects.get(kind=Job.Kind.GC)
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[preview.pk])
    preview.refresh_from_db()
    assert preview.state == Job.State.SUCCEEDED
    assert preview.params["dry_run"] is True
    assert store.blobs.has(orphan.digest)  # a preview deletes nothing
    page = admin_client.get(reverse("jobs:detail", args=[preview.pk])).content.decode()
    assert 'data-gc-count="1"' in page
    assert 'data-gc-bytes="2500"' in page
    assert f'Would free <strong title="2500 bytes">{human_size(2_500)}</strong>' in page
    assert orphan.digest in page
    assert re.search(r'<tr data-gc-item="blob">', page)
    assert 'data-action="gc-run"' in page  # the real one, from the preview

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("dashboard:gc"))
    run = Job.objects.filter(kind=Job.Kind.GC).exclude(pk=preview.pk).get()
    assert response["Location"] == reverse("jobs:detail", args=[run.pk])
    run.refresh_from_db()
    assert run.state == Job.State.SUCCEEDED
    assert not store.blobs.has(orphan.digest)
    page = admin_client.get(reverse("jobs:detail", args=[run.pk])).content.decode()
    assert "Freed <strong" in page
    assert 'data-action="gc-run"' not in page  # nothing to start from a finished run

    # a signed-in user who is not staff sees no button and may start neither
    django_user_model.objects.create_user("bob", password="a long passphrase")
    client.login(username="bob", password="a long passphrase")
    assert reverse("dashboard:gc") not in client.get("/").content.decode()
    assert client.post(reverse("dashboard:gc"), {"dry_run": "1"}).status_code == 403
    assert client.post(reverse("dashboard:gc")).status_code == 403
    page = client.get(reverse("jobs:detail", args=[preview.pk])).content.decode()
    assert 'data-action="gc-run"' not in page
    assert Job.objects.filter(kind=Job.Kind.GC).count() == 2
    # and a GET starts nothing
    assert admin_client.get(reverse("dashboard:gc")).status_code == 405
