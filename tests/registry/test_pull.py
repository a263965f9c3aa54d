"""Pulling from a real registry (the CNCF distribution server) through pull and unpack jobs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import InvalidManifest, InvalidReference
from layerhub.engine.union import UnionView
from layerhub.images.models import Image, Layer, PackageScan, RegistryCredential, Tag
from layerhub.images.services import image_pull
from layerhub.jobs.models import Job
from tests.conftest import S3Bucket
from tests.registry.conftest import Seed
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry, run_registry
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def pull(reference: str, platform: str | None = None) -> Job:
    job = image_pull(team=default_team(), reference=reference, platform=platform)
    job.refresh_from_db()
    return job


def statuses(job: Job) -> dict[str, str]:
    return {line["digest"]: line["status"] for line in job.progress}


def unpack_job(job: Job) -> Job:
    """The job that unpacked the layers: the pull itself, which unpacks as it downloads (an
    unpack job follows only for a layer it could not unpack)."""
    assert not job.children.exists()
    return job


def view_of(image: Image) -> UnionView:
    store = get_store()
    diff_ids = [row.layer.diff_id for row in image.image_layers.order_by("position")]
    return UnionView([store.snapshots.get(c) for c in chain_ids(diff_ids)], store.whiteouts)


def test_pull_records_image_layers_tag_and_snapshots(registry: Registry, seed: Seed) -> None:
    job = pull(f"{registry.host}/team/app:v1")
    assert job.state == Job.State.SUCCEEDED, job.error
    unpack = unpack_job(job)
    assert unpack.state == Job.State.SUCCEEDED, unpack.error
    image = job.image
    assert image is not None
    assert image.manifest_digest == seed.app_image.manifest.digest
    assert image.config_digest == seed.app_image.config.digest
    assert image.platform == "linux/amd64"
    tag = Tag.objects.get(repository__name="team/app", name="v1")
    assert tag.image == image
    assert tag.repository.registry == registry.host
    layers = [row.layer for row in image.image_layers.order_by("position")]
    assert [layer.digest for layer in layers] == [seed.base.digest, seed.app.digest]
    assert [layer.diff_id for layer in layers] == [seed.base.diff_id, seed.app.diff_id]
    assert all(layer.unpacked_at is not None for layer in layers)
    assert layers[0].unpacked_size == 300_000 + 400_000 + len(b"ID=layerhub-test\n") + 8 + 1
    assert layers[1].parent == layers[0]
    store = get_store()
    for digest in (seed.base.digest, seed.app.digest, image.config_digest, image.manifest_digest):
        assert store.blobs.has(digest)
    assert statuses(unpack) == {seed.base.digest: "Pull complete", seed.app.digest: "Pull complete"}
    # what an unpack job does at its end, the one-pass pull does too: the packages scan
    assert PackageScan.objects.filter(image=image).exists()
    # the union view of the snapshots is the image: the zstd layer's whiteout and opaque dir
    view = view_of(image)
    assert view.read_bytes("/app/run") == b"#!/bin/sh\necho app\n"
    assert not view.exists("/etc/motd")
    assert view.read_bytes("/etc/os-release") == b"ID=layerhub-test\n"
    assert [e.path for e in view.listdir("/opt/old")] == ["/opt/old/b"]
    assert list(Path(store.tmp).iterdir()) == []


def test_shared_base_is_downloaded_and_unpacked_once(proxy: FaultyProxy, seed: Seed) -> None:
    first = pull(f"{proxy.host}/team/app:v1")
    second = pull(f"{proxy.host}/team/other:other")
    assert first.state == second.state == Job.State.SUCCEEDED
    assert statuses(second)[seed.base.digest] == "Already exists"
    assert statuses(second)[seed.other.digest] == "Pull complete"
    assert proxy.blob_gets[seed.base.digest] == 1
    assert Layer.objects.filter(digest=seed.base.digest).count() == 1
    base_chain = chain_ids([seed.base.diff_id])[0]
    assert get_store().snapshots.chain_ids().count(base_chain) == 1
    assert first.image is not None
    assert second.image is not None
    assert set(first.image.layers.all()) & set(second.image.layers.all()) == {
        Layer.objects.get(chain_id=base_chain)
    }


def test_repull_skips_everything(registry: Registry, seed: Seed) -> None:
    pull(f"{registry.host}/team/app:v1")
    again = pull(f"{registry.host}/team/app:v1")
    assert set(statuses(again).values()) == {"Already exists"}
    assert set(statuses(unpack_job(again)).values()) == {"Already exists"}
    assert Image.objects.count() == 1


def test_index_picks_the_platform(registry: Registry, seed: Seed) -> None:
    amd = pull(f"{registry.host}/team/multi:multi")
    assert amd.state == Job.State.SUCCEEDED, amd.error
    assert amd.image is not None
    assert amd.image.platform == "linux/amd64"
    assert amd.image.index_digest == seed.multi.manifest.digest
    arm = pull(f"{registry.host}/team/multi:multi", platform="linux/arm64")
    assert arm.image is not None
    assert arm.image.platform == "linux/arm64/v8"
    assert view_of(arm.image).read_bytes("/arm/only") == b"arm64\n"
    missing = pull(f"{registry.host}/team/multi:multi", platform="linux/s390x")
    assert missing.state == Job.State.FAILED
    assert "no image for platform linux/s390x" in missing.error
    assert "linux/arm64/v8" in missing.error


def test_pull_by_digest(registry: Registry, seed: Seed) -> None:
    digest = seed.app_image.manifest.digest
    job = pull(f"{registry.host}/team/app@{digest}")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    assert job.image.manifest_digest == digest
    assert not Tag.objects.exists()  # a digest names no tag


def test_tag_that_moved_keeps_the_old_image(registry: Registry, seed: Seed) -> None:
    registry.push_layout(seed.layout, "v1", "team/moving")
    first = pull(f"{registry.host}/team/moving:v1")
    # the tag moves: push a different image under the same name
    registry.push_layout(seed.layout, "other", "team/moving", as_tag="v1")
    second = pull(f"{registry.host}/team/moving:v1")
    assert first.image is not None
    assert first.image != second.image
    tag = Tag.objects.get(repository__name="team/moving", name="v1")
    assert tag.image == second.image
    assert Image.objects.filter(pk=first.image.pk).exists()


def test_basic_auth_with_stored_credentials(basic_registry: Registry) -> None:
    ref = f"{basic_registry.host}/team/app:v1"
    anonymous = pull(ref)
    assert anonymous.state == Job.State.FAILED
    assert "requires a login" in anonymous.error
    cred = RegistryCredential(team=default_team(), host=basic_registry.host, username="tester")
    cred.set_password("wrong")
    cred.save()
    refused = pull(ref)
    assert refused.state == Job.State.FAILED
    assert "denied" in refused.error or "refused" in refused.error
    assert "wrong" not in refused.error
    cred.set_password(basic_registry.password or "")
    cred.save()
    assert bytes(cred.password_encrypted) != (basic_registry.password or "").encode()
    ok = pull(ref)
    assert ok.state == Job.State.SUCCEEDED, ok.error
    assert Image.objects.count() == 1


def test_bearer_token_flow(token_registry: Registry) -> None:
    ref = f"{token_registry.host}/team/app:v1"
    anonymous = pull(ref)
    assert anonymous.state == Job.State.FAILED
    assert "denied" in anonymous.error
    cred = RegistryCredential(
        team=default_team(), host=token_registry.host, username=token_registry.username or ""
    )
    cred.set_password(token_registry.password or "")
    cred.save()
    server = token_registry.token_server  # type: ignore[attr-defined]
    issued_before = server.issued
    ok = pull(ref)
    assert ok.state == Job.State.SUCCEEDED, ok.error
    assert unpack_job(ok).state == Job.State.SUCCEEDED
    # manifest, config and both layers went through with one token for the repository scope
    assert server.issued - issued_before == 1


def test_unknown_repository_and_tag(registry: Registry) -> None:
    for ref in (f"{registry.host}/team/nope:v1", f"{registry.host}/team/app:nope"):
        job = pull(ref)
        assert job.state == Job.State.FAILED
        assert "not found" in job.error
        assert ref in job.error
    assert not Image.objects.exists()


def test_bad_input_fails_before_any_job() -> None:
    with pytest.raises(InvalidReference, match="lowercase"):
        image_pull(team=default_team(), reference="Team/App")
    with pytest.raises(InvalidManifest, match="platform"):
        image_pull(team=default_team(), reference="debian", platform="linux")
    assert not Job.objects.exists()


def test_digest_mismatch_leaves_nothing(registry: Registry, seed: Seed, tmp_path: Path) -> None:
    # A registry serving corrupted bytes: a registry of its own whose stored base blob is
    # overwritten with other bytes of the same length.
    with run_registry(tmp_path / "corrupt") as bad:
        bad.push_layout(seed.layout, "v1", "team/app")
        hexdigest = seed.base.digest.split(":")[1]
        data = next((tmp_path / "corrupt" / "data").rglob(f"blobs/sha256/*/{hexdigest}/data"))
        data.write_bytes(bytes(len(data.read_bytes())))
        job = pull(f"{bad.host}/team/app:v1")
    assert job.state == Job.State.FAILED
    assert "digest mismatch" in job.error
    store = get_store()
    assert not store.blobs.has(seed.base.digest)
    assert list(store.tmp.iterdir()) == []
    assert not Image.objects.exists()
    assert not Layer.objects.exists()


def test_download_cut_off_resumes_with_range(proxy: FaultyProxy, seed: Seed) -> None:
    proxy.cut(seed.base.digest, after=100_000, times=2)
    job = pull(f"{proxy.host}/team/app:v1")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert proxy.blob_gets[seed.base.digest] == 3  # two cut short, then the rest by Range
    assert get_store().blobs.has(seed.base.digest)


def test_registry_dying_mid_download_fails_cleanly(
    proxy: FaultyProxy, seed: Seed, blob_driver: S3Bucket | None
) -> None:
    proxy.cut(seed.base.digest, after=50_000, times=100)
    job = pull(f"{proxy.host}/team/app:v1")
    assert job.state == Job.State.FAILED
    assert "kept failing" in job.error or "stopped at" in job.error
    store = get_store()
    assert not store.blobs.has(seed.base.digest)
    assert list(store.tmp.iterdir()) == []
    assert not Image.objects.exists()
    if blob_driver is not None:  # nothing of the layer reached the object store either
        assert seed.base.digest[7:] not in blob_driver.objects()
        assert blob_driver.uploads() == []


def test_concurrent_pulls_share_one_download_and_one_unpack(proxy: FaultyProxy, seed: Seed) -> None:
    """Two pulls that share a base run at the same time (their registry requests overlap), and
    the base is still downloaded once and unpacked once."""
    proxy.delay = 0.5  # keep the base download in flight while the other pull starts
    jobs: list[Job] = []
    errors: list[BaseException] = []
    started = threading.Barrier(2)

    def run(ref: str) -> None:
        try:
            started.wait(10)
            jobs.append(pull(ref))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [
        threading.Thread(target=run, args=(f"{proxy.host}/team/{name}",))
        for name in ("app:v1", "other:other")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(job.state == Job.State.SUCCEEDED for job in jobs), [j.error for j in jobs]
    # the pulls overlapped: a request of one was in flight while one of the other was, with
    # a blob download among them (not only the two first manifest requests)
    pairs = proxy.overlapping("team/app", "team/other")
    assert any("/blobs/" in a.path or "/blobs/" in b.path for a, b in pairs), proxy.windows
    assert proxy.blob_gets[seed.base.digest] == 1
    base_chain = chain_ids([seed.base.diff_id])[0]
    # one unpack job made the base snapshot, the other found it made
    base_statuses = sorted(statuses(unpack_job(job))[seed.base.digest] for job in jobs)
    assert base_statuses == ["Already exists", "Pull complete"]
    snapshots = os.listdir(get_store().snapshots.root)
    assert snapshots.count(base_chain.split(":")[1]) == 1
