"""Garbage collection of the multipart uploads an S3 client killed in the middle of one
leaves in the object store (SeaweedFS on loopback): listed by a dry run, aborted past
LAYERHUB_GC_KEEP_MULTIPART, never when young or when a running job has leased the blob."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine.blobstore.base import PendingUpload
from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.images.gc import store_gc
from layerhub.images.leases import job_lease
from layerhub.jobs.models import Job
from tests.conftest import S3Bucket

pytestmark = pytest.mark.django_db


def blob_name(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def begin(s3_blobs: S3Bucket) -> Iterator[dict[str, str]]:
    """Begins uploads of blob names under the test's prefix (name -> upload id, filled in by
    the test); whatever is left pending is aborted afterwards."""
    begun: dict[str, str] = {}
    yield begun
    for upload_id, name in begun.items():
        key = f"{s3_blobs.prefix}/sha256/{name}"
        s3_blobs.server.abort_upload(s3_blobs.bucket, key, upload_id)


def start(s3_blobs: S3Bucket, begun: dict[str, str], name: str, part: bytes = b"") -> str:
    key = f"{s3_blobs.prefix}/sha256/{name}"
    upload_id = s3_blobs.server.begin_upload(s3_blobs.bucket, key, part)
    begun[upload_id] = name
    return upload_id


def pending() -> dict[str, PendingUpload]:
    return {upload.upload_id: upload for upload in get_store().blobs.pending_uploads()}


def test_uploads_left_pending_past_the_setting_are_aborted_young_and_leased_ones_kept(
    s3_blobs: S3Bucket, begin: dict[str, str], settings: Settings
) -> None:
    settings.LAYERHUB_GC_KEEP_MULTIPART = timedelta(hours=1)
    part = b"p" * (5 << 20)
    stale = start(s3_blobs, begin, blob_name("stale"), part)
    leased = start(s3_blobs, begin, blob_name("leased"))
    job_lease(
        job=Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING),
        keys=[f"sha256:{blob_name('leased')}"],
    )
    time.sleep(1.1)  # the object store says when an upload began to the second
    young = start(s3_blobs, begin, blob_name("young"))
    found = pending()
    assert set(found) == {stale, leased, young}
    began_stale, began_young = found[stale].initiated, found[young].initiated
    assert began_stale is not None
    assert began_young is not None
    assert began_stale < began_young
    # a collection an hour after the young one began, less a moment: the others are older
    now: datetime = began_young + timedelta(hours=1) - timedelta(milliseconds=500)
    where = get_store().blobs.where(blob_name("stale"))

    dry = store_gc(dry_run=True, now=now)
    [item] = [item for item in dry.items if item.what == "multipart"]
    assert item.key == f"{where}?uploadId={stale}"
    assert item.size == len(part)
    assert item.line(dry_run=True).startswith(f"Would abort multipart upload {where}?uploadId=")
    assert any(leased in line and "leased by a running job" in line for line in dry.held)
    assert set(pending()) == {stale, leased, young}  # a dry run changes nothing

    report = store_gc(now=now)
    assert [i for i in report.items if i.what == "multipart"] == [item]
    assert item.line(dry_run=False).startswith("Aborted multipart upload ")
    assert report.freed_bytes >= len(part)
    assert set(pending()) == {leased, young}
    assert sorted(s3_blobs.uploads()) == sorted(
        f"{s3_blobs.prefix}/sha256/{name}" for name in (blob_name("leased"), blob_name("young"))
    )


def test_off_leaves_every_upload_alone(
    s3_blobs: S3Bucket, begin: dict[str, str], settings: Settings
) -> None:
    settings.LAYERHUB_GC_KEEP_MULTIPART = None
    upload = start(s3_blobs, begin, blob_name("left"))
    report = store_gc(now=datetime.now().astimezone() + timedelta(days=365))
    assert [i for i in report.items if i.what == "multipart"] == []
    assert set(pending()) == {upload}


def test_an_object_store_whose_uploads_cannot_be_listed_is_said_and_the_rest_collected(
    s3_blobs: S3Bucket, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys from an instance role (no AWS_ACCESS_KEY_ID to sign with): the report says why
    pending uploads were not looked at, and the collection goes on."""
    settings.LAYERHUB_GC_KEEP_MULTIPART = timedelta(hours=1)
    blobs = get_store().blobs
    assert isinstance(blobs, S3Blobs)
    orphan = blobs.put_bytes(b"no image names this").digest
    monkeypatch.setattr(blobs, "signing_keys", None)
    report = store_gc()
    assert [i.key for i in report.items if i.what == "blob"] == [orphan]
    [line] = report.left
    assert line.startswith("multipart uploads left pending: object store s3://")
    assert "AWS_ACCESS_KEY_ID" in line
