"""Each host's snapshot cache kept under LAYERHUB_SNAPSHOT_CACHE_MAX: the least recently used
evicted first, what containers, running jobs, recent uses and missing blobs hold kept, and an
evicted layer unpacked again from its blob when a container needs it. Real pulls into a real
store (blobs in the store's blobs/ and in an object store)."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.containers.files import container_files
from layerhub.containers.services import container_create, container_diff, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.container import Change
from layerhub.engine.digest import chain_ids, digest_hex
from layerhub.images import snapshot_cache
from layerhub.images.models import Blob, DedupInode, DedupLink, Layer, Snapshot
from layerhub.images.sizes import image_delete_plan
from layerhub.images.snapshot_cache import (
    KEPT_CONTAINER,
    KEPT_LEASE,
    KEPT_NO_BLOB,
    snapshot_cache_evict,
    snapshot_cache_list,
)
from layerhub.images.snapshots import host_snapshot_usage, snapshots_use_chains
from layerhub.images.verify import store_verify
from layerhub.jobs.models import Job, Lease
from tests.conftest import S3Bucket
from tests.registry.conftest import Seed
from tests.support.pulls import pulled
from tests.support.registry import Registry
from tests.support.teams import default_team
from workers.housekeeping import Housekeeper

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]


@pytest.fixture(autouse=True)
def cache_settings(settings: Settings) -> None:
    settings.LAYERHUB_HOST = "web"
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01
    settings.LAYERHUB_SNAPSHOT_CACHE_IDLE = timedelta(0)  # no grace: the tests say when


def layers(seed: Seed) -> tuple[str, str, str]:
    """The ChainIDs of the base layer, app:v1's layer and other:other's layer."""
    base, app = chain_ids([seed.base.diff_id, seed.app.diff_id])
    other = chain_ids([seed.base.diff_id, seed.other.diff_id])[1]
    return base, app, other


def used(chain: str, days_ago: float) -> None:
    Snapshot.objects.filter(layer__chain_id=chain, host="web").update(
        used_at=timezone.now() - timedelta(days=days_ago)
    )


def here() -> set[str]:
    """The ChainIDs this host has a row for, each checked against its tree."""
    rows = set(Snapshot.objects.filter(host="web").values_list("layer__chain_id", flat=True))
    store = get_store()
    assert {c for c in rows if store.snapshots.exists(c)} == rows, "a row naming no tree"
    return rows


def size_of(chain: str) -> int:
    return int(Snapshot.objects.get(layer__chain_id=chain, host="web").size)


def test_the_least_recently_used_go_first_and_only_down_to_the_limit(
    registry: Registry, seed: Seed
) -> None:
    pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    base, app, other = layers(seed)
    used(app, 3)
    used(other, 2)
    used(base, 1)
    # dedup linked a file of app's layer: the link was in the tree that goes
    inode = DedupInode.objects.create(size=1, sha256=b"\0" * 32)
    DedupLink.objects.create(inode=inode, layer=Layer.objects.get(chain_id=app), path="/app/run")
    total = sum(size_of(c) for c in (base, app, other))
    # another host's snapshot of the same layer, older still: that host's cache, not this one's
    beta = Snapshot.objects.create(
        layer=Layer.objects.get(chain_id=app),
        host="beta",
        size=1,
        used_at=timezone.now() - timedelta(days=9),
    )

    # one byte over: the oldest alone goes
    report = snapshot_cache_evict(limit=total - 1)
    assert [item.chain_id for item in report.evicted] == [app]
    assert report.freed_bytes == report.evicted[0].size
    assert here() == {base, other}
    assert not get_store().snapshots.exists(app)
    assert not DedupLink.objects.exists()
    assert Snapshot.objects.filter(pk=beta.pk).exists()
    # the layer's size stays known: the image's SIZE does not change
    assert Layer.objects.get(chain_id=app).unpacked_size == report.evicted[0].size

    # down to the base layer's size: the next oldest goes, the most recent stays
    report = snapshot_cache_evict(limit=size_of(base))
    assert [item.chain_id for item in report.evicted] == [other]
    assert report.remaining_bytes == size_of(base)
    assert here() == {base}
    # what is recorded is what is on disk
    assert store_verify().findings == []
    assert host_snapshot_usage() == (1, size_of(base))  # the Hosts table's figure


def test_containers_running_jobs_recent_uses_and_missing_blobs_keep_theirs(
    registry: Registry, seed: Seed, settings: Settings
) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    base, app, other = layers(seed)
    container_create(image=image.manifest_digest, team=default_team(), name="box")
    job = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    Lease.objects.create(job=job, key=other)

    kept = {item.chain_id: item.kept for item in snapshot_cache_list()}
    assert kept == {base: KEPT_CONTAINER, app: KEPT_CONTAINER, other: KEPT_LEASE}
    report = snapshot_cache_evict(limit=0)
    assert report.evicted == []
    assert here() == {base, app, other}
    assert "The rest is kept" in report.lines()[-1]

    # the job ended: its lease no longer holds; a use a moment ago does, while it is recent
    Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED)
    settings.LAYERHUB_SNAPSHOT_CACHE_IDLE = timedelta(minutes=10)
    kept = {item.chain_id: item.kept for item in snapshot_cache_list()}
    assert kept[other] == "used in the last 10\xa0minutes"
    assert snapshot_cache_evict(limit=0).evicted == []

    # no blob to unpack it from again: kept however old
    used(other, 1)
    row = Blob.objects.get(digest=seed.other.digest)
    row.delete()
    assert {i.chain_id: i.kept for i in snapshot_cache_list()}[other] == KEPT_NO_BLOB
    assert snapshot_cache_evict(limit=0).evicted == []
    # recorded, but its file is gone from blobs/: looked at again under the lock, kept
    row.save()
    path = get_store().blobs.local_path(seed.other.digest)
    assert path is not None
    path.unlink()
    report = snapshot_cache_evict(limit=0)
    assert (report.evicted, report.spared) == ([], [other])
    assert here() == {base, app, other}


def test_a_use_recorded_while_eviction_decides_keeps_the_snapshot(
    registry: Registry, seed: Seed, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    chains = list(image.layers.values_list("chain_id", flat=True))
    looked = []

    def used_meanwhile(key: str) -> bool:
        # asked under the snapshot's lock, just before the row would go: a page or a
        # container create records its use at that moment
        snapshots_use_chains(chains)
        looked.append(key)
        return False

    monkeypatch.setattr(snapshot_cache, "lease_held", used_meanwhile)
    report = snapshot_cache_evict(limit=0)
    assert len(looked) == 2
    assert report.evicted == []
    assert sorted(report.spared) == sorted(layers(seed)[:2])
    assert here() == set(layers(seed)[:2])


def test_an_evicted_image_is_unpacked_again_for_a_container(
    registry: Registry,
    seed: Seed,
    blob_driver: S3Bucket | None,
    admin_client: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    base, app, _ = layers(seed)
    sizes = {chain: size_of(chain) for chain in (base, app)}

    def no_request(self: object, digest: str) -> bool:
        raise AssertionError("eviction asked the object store")

    with monkeypatch.context() as patch:
        if blob_driver is not None:
            # the object store is not asked (the worker's main process evicts too: see
            # _blob_present); its Blob rows say the blobs are there
            patch.setattr(type(get_store().blobs), "has", no_request)
        report = snapshot_cache_evict(limit=0)
    assert sorted(item.chain_id for item in report.evicted) == sorted([base, app])
    assert report.freed_bytes == sum(sizes.values())
    assert here() == set()
    assert store_verify().findings == []
    # deleting the image now frees its blobs alone: no snapshot is left to free
    plan = image_delete_plan(image)
    assert plan.frees_bytes == plan.blob_bytes
    # pages that read the image's files without unpacking say why they cannot
    page = admin_client.get(f"/layers/image/{image.pk}/files/")
    assert page.status_code == 404
    assert "the snapshot caches let its layers go" in page.content.decode()
    api = admin_client.get(f"/api/v1/images/{image.pk}/files/")
    assert api.status_code == 404
    assert "opening a container from it unpacks them" in api.json()["error"]["message"]
    layer_page = admin_client.get(reverse("layers:detail", args=[digest_hex(app)]))
    assert "the snapshot caches let its layers go" in layer_page.content.decode()

    box = container_create(image=image.manifest_digest, team=default_team(), name="box")
    assert here() == {base, app}
    assert {chain: size_of(chain) for chain in (base, app)} == sizes
    assert container_files(box).view.read_bytes("/app/run") == b"#!/bin/sh\necho app\n"
    container_write_file(container=box, path="/app/note", data=b"back\n")
    assert container_diff(container=box) == [Change("C", "/app"), Change("A", "/app/note")]
    assert admin_client.get(f"/layers/image/{image.pk}/files/").status_code == 200
    assert store_verify().findings == []


def test_a_pull_evicts_what_its_own_image_does_not_need(
    registry: Registry, seed: Seed, settings: Settings
) -> None:
    settings.LAYERHUB_SNAPSHOT_CACHE_MAX = 1  # below anything: all that may go, goes
    pulled(f"{registry.host}/team/app:v1")
    base, app, other = layers(seed)
    assert here() == {base, app}  # its job's leases kept them while it trimmed
    pulled(f"{registry.host}/team/other:other")
    assert here() == {base, other}

    # the worker's housekeeping trims too, once the jobs are over
    Housekeeper(name="test", queues=[]).trim()
    assert here() == set()


def test_the_worker_trims_only_with_a_limit(settings: Settings) -> None:
    settings.LAYERHUB_SNAPSHOT_CACHE_MAX = 0
    names = [t.name for t in Housekeeper(name="test", queues=[])._threads]
    assert "layerhub-cache" not in names
    settings.LAYERHUB_SNAPSHOT_CACHE_MAX = 50 << 30
    names = [t.name for t in Housekeeper(name="test", queues=[])._threads]
    assert "layerhub-cache" in names


def command(*argv: str) -> str:
    out = io.StringIO()
    call_command("snapshots", *argv, stdout=out)
    return out.getvalue()


def test_the_command_lists_evicts_and_says_what_a_dry_run_would_free(
    registry: Registry, seed: Seed, settings: Settings
) -> None:
    image = pulled(f"{registry.host}/team/app:v1")
    pulled(f"{registry.host}/team/other:other")
    base, app, other = layers(seed)
    used(other, 2)
    container_create(image=image.manifest_digest, team=default_team(), name="box")

    with pytest.raises(CommandError, match=r"has no limit .* --to SIZE"):
        command("--evict")
    with pytest.raises(CommandError, match="--to 'lots' is not a size"):
        command("--evict", "--to", "lots")

    listing = command().splitlines()
    assert listing[0].startswith("Host web: 3 snapshots, ")
    assert listing[0].endswith("(no limit; LAYERHUB_SNAPSHOT_CACHE_MAX)")
    assert listing[2].split()[:4] == ["CHAIN", "ID", "SIZE", "LAST"]
    rows = {line.split()[0]: line for line in listing[3:]}
    assert rows[other].endswith("may go")
    assert rows[other].split()[2:5] == ["2", "days", "ago"]
    assert rows[base].endswith(f"kept: {KEPT_CONTAINER}")

    settings.LAYERHUB_SNAPSHOT_CACHE_MAX = size_of(base) + size_of(app)
    dry = command("--evict", "--dry-run").splitlines()
    assert dry[0].startswith(f"Would evict: {other} (")
    assert dry[0].endswith("last used 2\xa0days ago)")
    assert dry[1].startswith("Would free ")
    assert here() == {base, app, other}  # nothing evicted

    done = command("--evict").splitlines()
    assert done[0] == dry[0].replace("Would evict", "Evicted")
    assert done[1] == dry[1].replace("Would free", "Freed").replace("would hold", "holds")
    assert here() == {base, app}
    assert command("--evict").splitlines()[0] == "Nothing to evict"


def test_a_host_reports_its_cache_limit(settings: Settings, admin_client: Client) -> None:
    from layerhub.hosts.models import Host
    from layerhub.hosts.services import host_heartbeat

    settings.LAYERHUB_SNAPSHOT_CACHE_MAX = 50 * 10**9
    host_heartbeat()
    Host.objects.create(name="beta", heartbeat_at=timezone.now())
    hosts = {h["name"]: h for h in admin_client.get("/healthz").json()["hosts"]}
    assert hosts["web"]["snapshot_cache_max"] == 50 * 10**9
    assert hosts["beta"]["snapshot_cache_max"] is None
    page = admin_client.get("/").content.decode()
    assert 'title="LAYERHUB_SNAPSHOT_CACHE_MAX: 50000000000 bytes">of 50GB</span>' in page
    assert "no limit" in page
    df = io.StringIO()
    call_command("df", stdout=df)
    lines: list[Any] = df.getvalue().splitlines()
    assert lines[-3].split() == ["HOST", "SNAPSHOTS", "SIZE", "LIMIT", "RECLAIMABLE"]
    assert lines[-2].split()[:4] == ["beta", "0", "0B", "none"]
    assert lines[-1].split()[:4] == ["web", "0", "0B", "50GB"]
