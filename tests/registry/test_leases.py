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
from layerhub.engine import pull as engine_pull
from layerhub.engine.digest import chain_ids
from layerhub.images.layer_counts import layer_image_count_mismatches
from layerhub.images.models import Image, Layer
from layerhub.images.services import image_import, image_pull
from layerhub.images.services import pull as pull_services
from layerhub.images.services.transfer import image_remove
from layerhub.jobs.models import Job, Lease
from tests.registry.conftest import Seed
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def pulled(reference: str) -> Image:
    job = image_pull(team=default_team(), reference=reference)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert [c.state for c in job.children.all()] == [Job.State.SUCCEEDED]
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
    fetch_layers = engine_pull.fetch_layers
    removed: list[str] = []

    def then_rmi(*args: Any, **kwargs: Any) -> None:
        # the pull of b has judged the shared base "Already exists": now `rmi a` runs
        fetch_layers(*args, **kwargs)
        removed.extend(image_remove(image=a))

    monkeypatch.setattr(engine_pull, "fetch_layers", then_rmi)
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
    unpack = job.children.get()
    if not leases:
        assert unpack.state == Job.State.FAILED  # the race is real: the lease is what fixes it
        return
    assert unpack.state == Job.State.SUCCEEDED, unpack.error
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
    registry: Registry, seed: Seed
) -> None:
    job = image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")
    job.refresh_from_db()
    keys = set(Lease.objects.filter(job=job).values_list("key", flat=True))
    chains = chain_ids([seed.base.diff_id, seed.app.diff_id])
    assert keys == {
        seed.app_image.manifest.digest,
        seed.app_image.config.digest,
        seed.base.digest,
        seed.app.digest,
        *chains,
    }
    unpack = job.children.get()
    assert keys <= set(Lease.objects.filter(job=unpack).values_list("key", flat=True))


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
