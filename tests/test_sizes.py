"""Sizes from the database (no store on disk): per image, store totals, delete plans, and
bounded query counts. Rows are made here as a pull would record them (this host's snapshot
of each layer included)."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from layerhub.containers.models import Container
from layerhub.engine.digest import chain_ids
from layerhub.hosts.models import current_host
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.models import Blob, Image, Layer, Repository, Snapshot, Tag
from layerhub.images.sizes import (
    DeletePlan,
    image_delete_plan,
    images_delete_plan,
    images_with_sizes,
    own_blob_bytes_refresh,
    repository_delete_plan,
    store_totals,
    tag_delete_plan,
)
from layerhub.jobs.models import Job, Lease
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db

_counter = itertools.count()


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def blob(name: str, size: int, kind: str = Blob.Kind.LAYER) -> str:
    d = digest(name)
    Blob.objects.get_or_create(digest=d, defaults={"size": size, "kind": kind})
    return d


def image(
    layers: list[tuple[str, int, int]],
    *,
    tag: str | None = None,
    repo: str = "team/app",
    config: str | None = None,
    index: str = "",
) -> Image:
    """An image of ``layers`` (blob name, compressed size, unpacked size), bottom first, with
    its manifest and config blobs (100 and 10 bytes) recorded."""
    n = next(_counter)
    manifest = blob(f"manifest{n}", 100, Blob.Kind.MANIFEST)
    config_digest = blob(config or f"config{n}", 10, Blob.Kind.CONFIG)
    img = Image.objects.create(
        manifest_digest=manifest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=config_digest,
        index_digest=index,
        config={},
    )
    own_blob_bytes_refresh(Image.objects.filter(pk=img.pk))  # as blob_record does
    diff_ids = [digest(f"diff-{name}") for name, _, _ in layers]
    parent = None
    stack = []
    for position, ((name, size, unpacked), chain) in enumerate(
        zip(layers, chain_ids(diff_ids), strict=True)
    ):
        layer, _ = Layer.objects.get_or_create(
            chain_id=chain,
            defaults={
                "parent": parent,
                "digest": blob(name, size),
                "diff_id": diff_ids[position],
                "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
                "size": size,
                "unpacked_size": unpacked,
                "unpacked_at": timezone.now(),
            },
        )
        # this host's snapshot of it, as the pull that unpacked it records
        Snapshot.objects.get_or_create(
            layer=layer, host=current_host(), defaults={"size": unpacked}
        )
        stack.append(layer)
        parent = layer
    image_layers_add(image=img, layers=stack)
    if tag:
        repository, _ = Repository.objects.get_or_create(
            team=default_team(), registry="docker.io", name=repo
        )
        img.repositories.add(repository)
        Tag.objects.create(repository=repository, name=tag, image=img)
    return img


BASE = ("base", 1_000, 5_000)
APP = ("app", 200, 700)
OTHER = ("other", 300, 900)


def test_image_sizes_add_up() -> None:
    a = image([BASE, APP])
    b = image([BASE, OTHER])
    c = image([("alone", 50, 80)])
    # annotated rows: their extra attributes are not on the model
    rows: dict[int, Any] = {i.pk: i for i in images_with_sizes()}
    assert (rows[a.pk].size, rows[a.pk].shared_size, rows[a.pk].unique_size) == (5_700, 5_000, 700)
    assert (rows[b.pk].size, rows[b.pk].shared_size, rows[b.pk].unique_size) == (5_900, 5_000, 900)
    assert (rows[c.pk].size, rows[c.pk].shared_size, rows[c.pk].unique_size) == (80, 0, 80)
    assert rows[a.pk].download_size == 1_200
    assert rows[a.pk].layer_count == 2
    assert rows[a.pk].pending_layers == 0
    for row in rows.values():
        assert row.size == row.shared_size + row.unique_size


def test_store_totals_count_a_blob_shared_by_two_chains_once() -> None:
    # the same compressed layer over two different bases: two ChainIDs, one blob
    image([BASE, APP], config="cfg-a")
    image([OTHER, APP], config="cfg-b")
    totals = store_totals()
    assert totals.images == 2
    assert totals.layers == 4  # base, base+app, other, other+app
    # blobs: base, app, other, two manifests, two configs
    assert totals.blobs == 7
    assert totals.physical_blob_bytes == 1_000 + 200 + 300 + 2 * 100 + 2 * 10
    assert totals.physical_snapshot_bytes == 5_000 + 700 + 900 + 700
    logical = (1_000 + 5_000 + 200 + 700) + (300 + 900 + 200 + 700) + 2 * (100 + 10)
    assert totals.logical_bytes == logical
    assert totals.savings_bytes == logical - totals.physical_bytes == 200
    assert totals.savings_percent == pytest.approx(100 * 200 / logical)


def test_store_totals_of_an_empty_catalog() -> None:
    totals = store_totals()
    assert (totals.images, totals.blobs, totals.physical_bytes, totals.savings_percent) == (
        0,
        0,
        0,
        0.0,
    )


def test_delete_plan_keeps_what_another_image_uses() -> None:
    a = image([BASE, APP], config="shared-config")
    b = image([BASE, OTHER], config="shared-config")
    plan = image_delete_plan(a)
    chains = chain_ids([digest("diff-base"), digest("diff-app")])
    assert plan.snapshots == [(chains[1], 700)]
    assert dict(plan.blobs) == {digest("app"): 200, a.manifest_digest: 100}
    # the config b shares stays, as does the base
    assert plan.frees_bytes == 700 + 200 + 100
    assert plan.held == []
    assert not plan.blocked
    assert plan.images == [a.config_digest]
    assert image_delete_plan(b).frees_bytes == 900 + 300 + 100


def test_delete_plan_keeps_a_blob_another_chain_uses() -> None:
    a = image([BASE, APP])
    image([OTHER, APP])
    plan = image_delete_plan(a)
    chains = chain_ids([digest("diff-base"), digest("diff-app")])
    # both of a's snapshots go (their ChainIDs are a's alone); the app blob stays
    assert plan.snapshots == [(chains[1], 700), (chains[0], 5_000)]
    assert dict(plan.blobs) == {
        digest("base"): 1_000,
        a.manifest_digest: 100,
        a.config_digest: 10,
    }


def test_delete_plan_lists_what_a_lease_holds_apart() -> None:
    a = image([BASE, APP])
    job = Job.objects.create(kind=Job.Kind.PUSH, state=Job.State.RUNNING)
    Lease.objects.create(job=job, key=digest("app"))
    Lease.objects.create(job=job, key=a.config_digest)
    plan = image_delete_plan(a)
    assert sorted(plan.held) == sorted([digest("app"), a.config_digest])
    assert plan.held_bytes == 200 + 10
    assert dict(plan.blobs) == {digest("base"): 1_000, a.manifest_digest: 100}
    assert plan.frees_bytes == 1_000 + 100 + 5_000 + 700
    # an ended job's lease holds nothing
    job.finish()
    assert image_delete_plan(a).held == []


def test_a_leased_snapshot_keeps_the_layers_below_it() -> None:
    a = image([BASE, APP])
    chains = chain_ids([digest("diff-base"), digest("diff-app")])
    job = Job.objects.create(kind=Job.Kind.UNPACK, state=Job.State.QUEUED)
    Lease.objects.create(job=job, key=chains[1])
    plan = image_delete_plan(a)
    assert plan.snapshots == []
    # the leased layer's row stays, so the rows below it and both layer blobs stay too
    assert set(plan.held) == {chains[0], chains[1], digest("base"), digest("app")}
    assert plan.held_bytes == 5_000 + 700 + 1_000 + 200
    assert dict(plan.blobs) == {a.manifest_digest: 100, a.config_digest: 10}


def test_a_container_blocks_the_delete() -> None:
    a = image([BASE, APP])
    Container.objects.create(container_id="c" * 64, name="web", image=a, team=default_team())
    plan = image_delete_plan(a)
    assert plan.blocked
    assert plan.containers == ["web"]


def test_tag_plan_untags_while_another_tag_is_left() -> None:
    a = image([BASE, APP], tag="v1")
    repository = Repository.objects.get(name="team/app")
    second = Tag.objects.create(repository=repository, name="latest", image=a)
    plan = tag_delete_plan(second)
    assert plan == DeletePlan(untagged=["docker.io/team/app:latest"])
    assert plan.frees_bytes == 0
    second.delete()
    last = tag_delete_plan(Tag.objects.get(name="v1"))
    assert last.untagged == ["docker.io/team/app:v1"]
    assert last.frees_bytes == image_delete_plan(a).frees_bytes > 0


def test_repository_plan_frees_what_its_images_alone_hold() -> None:
    a = image([BASE, APP], tag="v1")
    b = image([BASE, OTHER], tag="v2")
    image([BASE], tag="base", repo="team/base")
    plan = repository_delete_plan(Repository.objects.get(name="team/app"))
    assert sorted(plan.images) == sorted([a.config_digest, b.config_digest])
    assert sorted(plan.untagged) == ["docker.io/team/app:v1", "docker.io/team/app:v2"]
    # the base is kept by team/base; both tops go
    assert sorted(size for _, size in plan.snapshots) == [700, 900]
    assert plan.frees_bytes == 700 + 900 + 200 + 300 + 2 * (100 + 10)
    assert images_delete_plan([]) == DeletePlan()


def _queries(fn: object) -> int:
    with CaptureQueriesContext(connection) as ctx:
        fn()  # type: ignore[operator]
    return len(ctx.captured_queries)


def test_query_counts_do_not_grow_with_the_catalog() -> None:
    for n in range(5):
        image([BASE, (f"l{n}", 10, 20)])
    few = (_queries(lambda: list(images_with_sizes())), _queries(store_totals))
    for n in range(5, 50):
        image([BASE, (f"l{n}", 10, 20)], tag=f"t{n}")
    many = (_queries(lambda: list(images_with_sizes())), _queries(store_totals))
    assert few == many
    assert many[0] == 1
    assert many[1] <= 5  # the last: what dedup's hardlinks store once
    # a plan costs the same whatever the catalog holds
    first = Image.objects.order_by("pk").first()
    assert first is not None
    assert _queries(lambda: image_delete_plan(first)) <= 13  # one: dedup's shared inodes


def test_a_plan_over_a_queryset_equals_the_plan_over_its_images() -> None:
    image([BASE, APP], tag="v1")
    image([BASE, OTHER], tag="v2")
    keep = image([BASE, ("kept", 5, 6)])
    job = Job.objects.create(kind=Job.Kind.PULL, state=Job.State.RUNNING)
    Lease.objects.create(job=job, key=digest("other"))
    idle = Image.objects.exclude(pk=keep.pk)
    assert images_delete_plan(idle) == images_delete_plan(list(idle))
    plan = images_delete_plan(idle)
    assert plan.held == [digest("other")]
    assert sorted(size for _, size in plan.snapshots) == [700, 900]
