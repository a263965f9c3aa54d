"""In-use data is never deleted (leases), and imports store no second copy of a layer."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine import pipeline
from layerhub.engine.apply import apply_layer as real_apply
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import LayerError
from layerhub.engine.pipeline import LayerPipeline
from layerhub.images.layer_counts import layer_image_count_mismatches
from layerhub.images.models import Image, Layer
from layerhub.images.services import image_import, image_pull
from layerhub.images.services import pull as pull_services
from layerhub.images.services.transfer import image_remove
from layerhub.jobs.models import Job, Lease
from tests.registry.conftest import Seed
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def pulled(reference: str) -> Image:
    job = image_pull(team=default_team(), reference=reference)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert not job.children.exists()  # the pull unpacked every layer itself
    assert job.image is not None
    return job.image


def _no_lease(job: Job) -> Callable[[Sequence[str]], None]:
    return lambda keys: None


@pytest.mark.parametrize("leases", [True, False], ids=["leased", "without-leases"])
def test_rmi_while_a_pull_shares_its_base_leaves_what_the_pull_leased(
    registry: Registry, seed: Seed, monkeypatch: pytest.MonkeyPatch, leases: bool
) -> None:
    a = f"{registry.host}/team/app:v1"
    b = f"{registry.host}/team/other:other"
    pulled(a)
    store = get_store()
    base_chain, app_chain = chain_ids([seed.base.diff_id, seed.app.diff_id])
    plan = LayerPipeline._plan
    removed: list[str] = []

    def then_rmi(self: LayerPipeline) -> None:
        # the pull of b has judged the shared base "Already exists": now `rmi a` runs
        plan(self)
        removed.extend(image_remove(image=a))

    monkeypatch.setattr(LayerPipeline, "_plan", then_rmi)
    if not leases:  # the same race with today's behaviour: nothing leased
        monkeypatch.setattr(pull_services, "job_leaser", _no_lease)
        monkeypatch.setattr(pull_services, "job_lease", lambda **kw: None)
        monkeypatch.setattr(pull_services, "job_lease_copy", lambda **kw: None)

    job = image_pull(team=default_team(), reference=b)
    job.refresh_from_db()
    assert removed[0] == f"Untagged: {a}"
    # leased by the pull, the base's row and snapshot stay for the image the pull records;
    # unleased, its row goes (no image named it then)
    assert (f"Deleted: {base_chain}" in removed) is not leases
    assert job.state == Job.State.SUCCEEDED, job.error
    # the rmi uncounted a on its layers, the pull counted b on its: each count is its rows'
    assert layer_image_count_mismatches() == []
    if not leases:
        # the race is real: the image names a base the store lost, and the unpack queued
        # for it fails; the lease is what fixes it
        assert job.children.get().state == Job.State.FAILED
        return
    assert not job.children.exists()  # the pull unpacked what it lacked
    assert job.image_id is not None
    image = Image.objects.get(pk=job.image_id)
    assert [row.layer.chain_id for row in image.image_layers.order_by("position")] == chain_ids(
        [seed.base.diff_id, seed.other.diff_id]
    )
    for layer in Layer.objects.filter(image_layers__image=image):
        assert layer.unpacked_at is not None
        assert store.blobs.has(layer.digest)
        assert store.snapshots.exists(layer.chain_id)
    # what only a used is gone for good
    assert not store.blobs.has(seed.app.digest)
    assert not store.snapshots.exists(app_chain)
    assert not Image.objects.filter(manifest_digest=seed.app_image.manifest.digest).exists()
    # the leases ended with their jobs: the next rmi deletes everything
    assert Lease.objects.filter(job__state__in=[Job.State.QUEUED, Job.State.RUNNING]).count() == 0
    image_remove(image=b)
    assert list(store.blobs.digests()) == []
    assert list(store.snapshots.root.iterdir()) == []


def test_a_pull_leases_before_it_judges_and_hands_the_unpack_its_leases(
    registry: Registry, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused: list[str] = []

    def apply_once_refused(stream: Any, dest: Path, **kwargs: Any) -> Any:
        # the pull cannot unpack the app layer (once): an unpack job is queued for it
        result = real_apply(stream, dest, **kwargs)
        if result.diff_id == seed.app.diff_id and not refused:
            refused.append(result.diff_id)
            raise LayerError("refused once by the test")
        return result

    monkeypatch.setattr(pipeline, "apply_layer", apply_once_refused)
    # unpacked in this process's threads, where the patched apply_layer runs
    monkeypatch.setattr(LayerPipeline, "_take_unpacker", lambda self: None)
    job = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    keys = set(Lease.objects.filter(job=job).values_list("key", flat=True))
    chains = chain_ids([seed.base.diff_id, seed.app.diff_id])
    assert keys == {
        seed.app_image.manifest.digest,
        seed.app_image.config.digest,
        seed.base.digest,
        seed.app.digest,
        *chains,
    }
    assert refused
    unpack = job.children.get()
    assert unpack.state == Job.State.SUCCEEDED, unpack.error
    assert keys <= set(Lease.objects.filter(job=unpack).values_list("key", flat=True))
    statuses = {line["digest"]: line["status"] for line in job.progress}
    assert statuses == {seed.base.digest: "Pull complete", seed.app.digest: "Download complete"}
    assert Layer.objects.get(chain_id=chains[1]).unpacked_at is not None


# -- import of a saved image --------------------------------------------------------------------


def test_import_of_a_saved_pulled_image_stores_no_second_copy(
    registry: Registry, tmp_path: Path
) -> None:
    reference = f"{registry.host}/team/app:v1"
    original = pulled(reference)
    store = get_store()
    archive = tmp_path / "app.tar"
    call_command("save", reference, "-o", str(archive), stdout=io.StringIO())
    before = set(store.blobs.digests())
    job = image_import(team=default_team(), path=str(archive))
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    imported = job.image
    assert imported is not None
    assert imported.pk != original.pk
    assert imported.config_digest == original.config_digest
    # the store gains the new manifest only: the layers are the pulled, compressed blobs
    assert set(store.blobs.digests()) - before == {imported.manifest_digest}
    manifest = json.loads(store.blobs.read_bytes(imported.manifest_digest))
    original_manifest = json.loads(store.blobs.read_bytes(original.manifest_digest))
    assert manifest["layers"] == original_manifest["layers"]
    assert [r.layer_id for r in imported.image_layers.order_by("position")] == [
        r.layer_id for r in original.image_layers.order_by("position")
    ]
    # both removed, the store is empty
    repository = f"{registry.host}/team/app"
    image_remove(image=f"{repository}@{original.manifest_digest}")
    image_remove(image=f"{repository}@{imported.manifest_digest}")
    assert not Image.objects.exists()
    assert list(store.blobs.digests()) == []
    assert list(store.snapshots.root.iterdir()) == []


def test_a_failed_import_takes_back_the_blobs_it_added(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    reference = f"{registry.host}/team/app:v1"
    pulled(reference)
    store = get_store()
    archive = tmp_path / "app.tar"
    call_command("save", reference, "-o", str(archive), stdout=io.StringIO())
    image_remove(image=reference)
    assert list(store.blobs.digests()) == []
    # the top layer's tar is replaced by garbage of the same name: the import fails on it
    broken = tmp_path / "broken.tar"
    top = f"{seed.app.diff_id.split(':')[1]}/layer.tar"
    with tarfile.open(archive) as src, tarfile.open(broken, "w") as dst:
        for member in src.getmembers():
            if member.name == top:
                garbage = b"not the layer"
                member.size = len(garbage)
                dst.addfile(member, io.BytesIO(garbage))
            else:
                dst.addfile(member, src.extractfile(member) if member.isreg() else None)
    job = image_import(team=default_team(), path=str(broken))
    job.refresh_from_db()
    assert job.state == Job.State.FAILED
    assert "mismatch" in job.error
    assert list(store.blobs.digests()) == []
    assert list(store.tmp.iterdir()) == []
