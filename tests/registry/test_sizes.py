"""Sizes against a real store: what pulls record, and deletes that free exactly what their
plan says, measured on disk (the sum of st_size of the regular files under blobs/ and
snapshots/, a hardlinked file once)."""

from __future__ import annotations

import gzip
import io
import os
import random
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.apps import apps
from django.core.management import call_command
from pytest_django import Settings

from layerhub.containers.services import container_commit, container_create, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.blobstore.s3 import S3Blobs
from layerhub.engine.digest import chain_ids
from layerhub.engine.errors import Conflict
from layerhub.engine.fsutil import tree_usage
from layerhub.images.models import Blob, Image, Layer
from layerhub.images.services import image_pull
from layerhub.images.services.transfer import image_remove, image_remove_plan
from layerhub.images.sizes import image_delete_plan, store_totals
from layerhub.jobs.models import Job, Lease
from tests.registry.conftest import Seed
from tests.support.oci import LAYER_MEDIA, LayerBlob, make_layer, sha, write_layout
from tests.support.oci import Image as OciImage
from tests.support.registry import Registry
from tests.support.seaweedfs import SeaweedFS
from tests.support.teams import default_team

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("eager", "blob_driver"),
]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def _random(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _twice_written_layer() -> LayerBlob:
    """A layer whose tar writes one path twice (only the second copy stays on disk) and
    hardlinks it: its snapshot holds 10 bytes, though the tar carries 1,010."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for data in (b"x" * 1000, b"y" * 10):
            info = tarfile.TarInfo("dup")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("dup-link")
        link.type = tarfile.LNKTYPE
        link.linkname = "dup"
        tar.addfile(link)
    raw = buf.getvalue()
    return LayerBlob(LAYER_MEDIA["gzip"], gzip.compress(raw, mtime=0), sha(raw))


@dataclass
class Shared:
    """Two images whose top layer is one blob over two different bases (two ChainIDs)."""

    first_base: LayerBlob
    second_base: LayerBlob
    top: LayerBlob
    twice: LayerBlob


@pytest.fixture(scope="module")
def shared(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Shared:
    first_base = make_layer({"base1": None, "base1/lib": _random(11, 120_000)})
    second_base = make_layer({"base2": None, "base2/lib": _random(12, 90_000)})
    top = make_layer({"app": None, "app/bin": _random(13, 60_000)})
    twice = _twice_written_layer()
    layout = write_layout(
        tmp_path_factory.mktemp("sizes-layout"),
        {
            "one": OciImage([first_base, top]),
            "two": OciImage([second_base, top]),
            "twice": OciImage([twice]),
        },
    )
    for tag in ("one", "two", "twice"):
        registry.push_layout(layout, tag, f"sizes/{tag}")
    return Shared(first_base, second_base, top, twice)


def pulled(reference: str) -> Image:
    job = image_pull(team=default_team(), reference=reference)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert not job.children.exists()  # the pull unpacked every layer itself
    assert job.image is not None
    return job.image


def disk_bytes() -> int:
    """The sum of st_size of the regular files under blobs/ and snapshots/, each inode once;
    with blobs in an object store, its objects' sizes as the store's own listing gives them
    (independent of the blob store's code) instead of blobs/."""
    store = get_store()
    seen: set[tuple[int, int]] = set()
    total = 0
    tops = [store.root / "snapshots"]
    if isinstance(store.blobs, S3Blobs):
        server = SeaweedFS(os.environ["AWS_ENDPOINT_URL"])
        total += sum(server.keys(store.blobs.bucket, f"{store.blobs.prefix}/sha256/").values())
    else:
        tops.append(store.root / "blobs")
    for top in tops:
        for folder, dirs, files in os.walk(top, followlinks=False):
            for name in [*files, *dirs]:
                st = os.lstat(os.path.join(folder, name))
                key = (st.st_dev, st.st_ino)
                if stat.S_ISREG(st.st_mode) and key not in seen:
                    seen.add(key)
                    total += st.st_size
    return total


def test_pulls_record_every_blob_and_exact_snapshot_sizes(
    registry: Registry, shared: Shared
) -> None:
    image = pulled(f"{registry.host}/sizes/one:one")
    store = get_store()
    recorded = dict(Blob.objects.values_list("digest", "kind"))
    assert recorded == {
        image.manifest_digest: "manifest",
        image.config_digest: "config",
        shared.first_base.digest: "layer",
        shared.top.digest: "layer",
    }
    for row in Blob.objects.all():
        assert row.size == store.blobs.size(row.digest)
    image.refresh_from_db()  # the image totals its own manifest and config for the logical sum
    own = store.blobs.size(image.manifest_digest) + store.blobs.size(image.config_digest)
    assert image.own_blob_bytes == own
    for layer in Layer.objects.all():
        assert (layer.unpacked_size, layer.file_count) == tree_usage(
            store.snapshots.path(layer.chain_id)
        )
    assert store_totals().physical_bytes == disk_bytes()


def test_a_path_written_twice_counts_once(registry: Registry, shared: Shared) -> None:
    pulled(f"{registry.host}/sizes/twice:twice")
    layer = Layer.objects.get()
    assert layer.unpacked_size == 10  # the tar carries 1,010 bytes; the snapshot keeps 10
    assert layer.file_count == 2
    assert store_totals().physical_bytes == disk_bytes()


def test_delete_frees_exactly_the_plan_with_a_blob_shared_by_two_chains(
    registry: Registry, shared: Shared
) -> None:
    one = pulled(f"{registry.host}/sizes/one:one")
    pulled(f"{registry.host}/sizes/two:two")
    store = get_store()
    one_chains = chain_ids([shared.first_base.diff_id, shared.top.diff_id])
    assert store_totals().physical_bytes == disk_bytes()

    plan = image_delete_plan(one)
    # both of one's snapshots are its own; the top blob stays for the other ChainID
    assert [chain for chain, _ in plan.snapshots] == [one_chains[1], one_chains[0]]
    assert shared.top.digest not in dict(plan.blobs)
    assert set(dict(plan.blobs)) == {
        one.manifest_digest,
        one.config_digest,
        shared.first_base.digest,
    }
    before = disk_bytes()
    image_remove(image=f"{registry.host}/sizes/one:one")
    assert before - disk_bytes() == plan.frees_bytes
    assert plan.frees_bytes > 120_000 * 2
    assert store.blobs.has(shared.top.digest)
    assert not store.snapshots.exists(one_chains[0])
    totals = store_totals()
    assert totals.physical_bytes == disk_bytes()
    assert totals.blobs == len(list(store.blobs.digests()))


def test_delete_keeps_a_layer_a_container_uses(registry: Registry, seed: Seed) -> None:
    app = pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    container_create(team=default_team(), image=f"{registry.host}/team/other:other", name="keeper")
    base_chain = chain_ids([seed.base.diff_id])[0]

    plan = image_delete_plan(app)
    assert base_chain not in dict(plan.snapshots)
    assert seed.base.digest not in dict(plan.blobs)
    before = disk_bytes()
    image_remove(image=f"{registry.host}/team/app:v1")
    assert before - disk_bytes() == plan.frees_bytes
    assert get_store().snapshots.exists(base_chain)
    # the image the container stands on cannot go: its plan says so, and rmi refuses
    other_plan = image_remove_plan(image=f"{registry.host}/team/other:other")
    assert other_plan.blocked
    assert other_plan.containers == ["keeper"]
    with pytest.raises(Conflict, match="keeper"):
        image_remove(image=f"{registry.host}/team/other:other")
    assert store_totals().physical_bytes == disk_bytes()


def test_delete_leaves_what_a_lease_holds_and_lists_it(registry: Registry, seed: Seed) -> None:
    app = pulled(f"{registry.host}/team/app:v1")
    store = get_store()
    job = Job.objects.create(kind=Job.Kind.EXPORT, state=Job.State.RUNNING)
    Lease.objects.create(job=job, key=seed.app.digest)

    plan = image_delete_plan(app)
    assert plan.held == [seed.app.digest]
    assert plan.held_bytes == seed.app.size
    assert seed.app.digest not in dict(plan.blobs)
    before = disk_bytes()
    image_remove(image=f"{registry.host}/team/app:v1")
    assert before - disk_bytes() == plan.frees_bytes
    assert store.blobs.has(seed.app.digest)
    # its size row stays with the file, so the physical total still matches the disk
    assert Blob.objects.filter(digest=seed.app.digest).exists()
    assert store_totals().physical_bytes == disk_bytes() == seed.app.size


def test_rmi_dry_run_prints_the_bytes_and_removes_nothing(
    registry: Registry, seed: Seed, tmp_path: Path
) -> None:
    pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    ref = f"{registry.host}/team/app:v1"
    before = disk_bytes()
    out = io.StringIO()
    call_command("rmi", "--dry-run", ref, stdout=out)
    text = out.getvalue()
    assert before == disk_bytes()
    assert Image.objects.count() == 2
    freed = [line for line in text.splitlines() if line.startswith("would free ")]
    assert len(freed) == 1
    number = int(freed[0].split()[2])
    assert freed[0] == f"would free {number} bytes"
    assert f"Would untag: {ref}" in text
    assert f"Would delete blob: {seed.app.digest} ({seed.app.size} bytes)" in text
    assert seed.base.digest not in text  # the other image keeps the base

    call_command("rmi", ref, stdout=io.StringIO())
    assert before - disk_bytes() == number


def test_backfill_records_blobs_of_images_recorded_before(registry: Registry, seed: Seed) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    expected = set(Blob.objects.values_list("digest", "size", "kind"))
    Blob.objects.all().delete()
    backfill = __import__(
        "layerhub.images.migrations.0004_blob_backfill", fromlist=["backfill"]
    ).backfill
    backfill(apps, None)
    assert set(Blob.objects.values_list("digest", "size", "kind")) == expected
    assert image.manifest_digest in {d for d, _, _ in expected}


def test_a_commit_records_its_blobs_and_the_totals_follow_the_disk(
    registry: Registry, seed: Seed
) -> None:
    pulled(f"{registry.host}/team/app:v1")
    container = container_create(
        team=default_team(), image=f"{registry.host}/team/app:v1", name="edit"
    )
    container_write_file(container=container, path="/etc/motd", data=b"changed\n" * 100)
    job = container_commit(container=container, repository="localhost/changed:1")
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    committed = job.image
    top = committed.image_layers.select_related("layer").order_by("-position")[0].layer
    kinds = dict(Blob.objects.values_list("digest", "kind"))
    assert kinds[committed.manifest_digest] == "manifest"
    assert kinds[committed.config_digest] == "config"
    assert kinds[top.digest] == "layer"
    assert top.unpacked_size == 800
    assert store_totals().physical_bytes == disk_bytes()
    # the commit's image alone owns its top layer: deleting it frees exactly that much
    plan = image_delete_plan(committed)
    assert [chain for chain, _ in plan.snapshots] == [top.chain_id]
    before = disk_bytes()
    image_remove(image="localhost/changed:1")
    assert before - disk_bytes() == plan.frees_bytes
    assert store_totals().physical_bytes == disk_bytes()


def test_an_index_blob_stays_while_another_platform_of_it_does(
    registry: Registry, seed: Seed
) -> None:
    amd = pulled(f"{registry.host}/team/multi:multi")
    job = image_pull(
        team=default_team(),
        reference=f"{registry.host}/team/multi:multi",
        platform="linux/arm64/v8",
    )
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    arm = job.image
    assert amd.index_digest == arm.index_digest != ""
    assert Blob.objects.get(digest=amd.index_digest).kind == "index"
    plan = image_delete_plan(amd)
    assert amd.index_digest not in dict(plan.blobs)
    assert amd.index_digest not in dict(image_delete_plan(arm).blobs)
    before = disk_bytes()
    image_remove(image=amd.manifest_digest)
    assert before - disk_bytes() == plan.frees_bytes
    # now the index is arm's alone: its delete takes it
    last = image_delete_plan(arm)
    assert amd.index_digest in dict(last.blobs)
    before = disk_bytes()
    image_remove(image=arm.manifest_digest, force=True)
    assert before - disk_bytes() == last.frees_bytes
    assert disk_bytes() == 0
    assert store_totals().physical_bytes == 0
