"""Layers' file indexes recorded where snapshots are made: the one-pass pull, the unpack job
after an import, container commit; the index job and ``manage.py index_files`` for snapshots
made before indexing; removal of a layer removes its rows. Against the CNCF registry."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from pytest_django import Settings

from layerhub.containers.services import container_commit, container_create, container_write_file
from layerhub.core.store import get_store
from layerhub.engine.file_index import FILE, HARDLINK, OPAQUE, WHITEOUT, walk_snapshot
from layerhub.images.file_index import indexed_layer_ids, layer_files
from layerhub.images.gc import store_gc
from layerhub.images.models import FileEntry, Image, Layer, LayerFiles, Tag
from layerhub.images.services import image_import, image_pull
from layerhub.images.services.file_index import index_files_start
from layerhub.images.services.transfer import image_remove
from layerhub.jobs.models import Job
from tests.registry.conftest import Seed
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, write_layout
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("eager")]


@pytest.fixture(autouse=True)
def quick_retries(settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_BACKOFF = 0.01


def done(job: Job) -> Job:
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    return job


def layers_of(image: Image | None) -> list[Layer]:
    assert image is not None
    return [row.layer for row in image.image_layers.order_by("position")]


def assert_indexed_as_on_disk(layers: list[Layer]) -> None:
    """Each layer's recorded index is what a walk of its snapshot reads now."""
    store = get_store()
    recorded = layer_files([layer.pk for layer in layers])
    for layer in layers:
        assert layer.pk in recorded, f"{layer.chain_id} has no index"
        walked = list(walk_snapshot(store.snapshots.path(layer.chain_id), store.whiteouts))
        assert recorded[layer.pk] == walked
        files = LayerFiles.objects.get(layer=layer)
        assert files.entry_count == len(walked)
        assert files.content_bytes == sum(r.size for r in walked if r.kind == FILE)


def raw_layer(entries: list[tuple[tarfile.TarInfo, bytes]]) -> LayerBlob:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_600_000_000
    return info


def test_a_pull_records_each_layer_it_made(registry: Registry, seed: Seed) -> None:
    job = done(image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1"))
    base, app = layers_of(job.image)
    assert_indexed_as_on_disk([base, app])
    app_entries = {(r.path, r.kind) for r in layer_files([app.pk])[app.pk]}
    assert ("etc/motd", WHITEOUT) in app_entries  # the zstd layer's whiteout
    assert ("opt/old", OPAQUE) in app_entries
    libbig = FileEntry.objects.get(layer=base, path="usr/lib/libbig.so")
    assert libbig.name == "libbig.so"
    assert (
        bytes(libbig.sha256 or b"")
        == hashlib.sha256(
            (get_store().snapshots.path(base.chain_id) / "usr/lib/libbig.so").read_bytes()
        ).digest()
    )

    # a second image on the same base: the base's snapshot and its index are kept as they are
    before = LayerFiles.objects.get(layer=base)
    other = done(image_pull(team=default_team(), reference=f"{registry.host}/team/other:other"))
    shared, own = layers_of(other.image)
    assert shared == base
    after = LayerFiles.objects.get(layer=base)
    assert (after.pk, after.indexed_at) == (before.pk, before.indexed_at)
    assert_indexed_as_on_disk([own])


def test_a_layer_that_cannot_be_unpacked_records_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    good = raw_layer([(entry("ok"), b"fine")])
    hostile = raw_layer(
        [(entry("a"), b"a"), (entry("b", tarfile.LNKTYPE, "../../etc/passwd"), b"")]
    )
    layout = write_layout(tmp_path / "layout", {"bad": OciImage([good, hostile])})
    registry.push_layout(layout, "bad", "team/hostile")
    job = image_pull(team=default_team(), reference=f"{registry.host}/team/hostile:bad")
    job.refresh_from_db()
    good_row = Layer.objects.get(digest=good.digest)
    bad_row = Layer.objects.get(digest=hostile.digest)
    assert bad_row.unpacked_at is None
    assert not FileEntry.objects.filter(layer=bad_row).exists()
    assert bad_row.pk not in indexed_layer_ids([bad_row.pk])
    assert_indexed_as_on_disk([good_row])


def test_an_import_and_a_commit_record_their_layers(tmp_path: Path) -> None:
    layer = raw_layer(
        [
            (entry("bin/", tarfile.DIRTYPE), b""),
            (entry("bin/tool"), b"#!/bin/sh\n"),
            (entry("bin/tool-link", tarfile.LNKTYPE, "bin/tool"), b""),
        ]
    )
    layout = write_layout(tmp_path / "layout", {"localhost/base:1": OciImage([layer])})
    job = done(image_import(team=default_team(), path=str(layout)))
    assert all(child.state == Job.State.SUCCEEDED for child in job.children.all())
    [base] = layers_of(job.image)
    assert_indexed_as_on_disk([base])
    kinds = {r.path: r.kind for r in layer_files([base.pk])[base.pk]}
    assert (kinds["bin/tool"], kinds["bin/tool-link"]) == (FILE, HARDLINK)

    container = container_create(team=default_team(), image="localhost/base:1", name="work")
    container_write_file(container=container, path="/bin/greeting", data=b"hello\n")
    committed = done(container_commit(container=container, repository="localhost/done:1"))
    top = layers_of(committed.image)[-1]
    assert_indexed_as_on_disk([top])
    greeting = FileEntry.objects.get(layer=top, path="bin/greeting")
    assert bytes(greeting.sha256 or b"") == hashlib.sha256(b"hello\n").digest()


def test_snapshots_made_before_indexing_are_indexed_by_the_command_and_the_job(
    registry: Registry, seed: Seed
) -> None:
    app = done(image_pull(team=default_team(), reference=f"{registry.host}/team/app:v1")).image
    other = done(image_pull(team=default_team(), reference=f"{registry.host}/team/other:other"))
    layers = layers_of(app) + layers_of(other.image)[1:]
    LayerFiles.objects.all().delete()  # as a store from before indexing
    FileEntry.objects.all().delete()

    out = io.StringIO()
    assert app is not None
    call_command("index_files", app.image_id[:12], stdout=out)
    assert "indexed 2 of 2 layers" in out.getvalue()
    assert indexed_layer_ids(layer.pk for layer in layers) == {layers[0].pk, layers[1].pk}
    assert_indexed_as_on_disk(layers[:2])

    job = done(index_files_start())  # every snapshot still without an index
    assert job.params["report"]["indexed"] == [
        [layers[2].chain_id, LayerFiles.objects.get(layer=layers[2]).entry_count]
    ]
    assert_indexed_as_on_disk(layers)

    out = io.StringIO()
    call_command("index_files", "--all", stdout=out)
    assert "indexed 0 of 0 layers" in out.getvalue()  # nothing left to do
    with pytest.raises(CommandError, match="IMAGE"):
        call_command("index_files")


def test_the_command_reports_a_missing_snapshot(registry: Registry, seed: Seed) -> None:
    job = done(image_pull(team=default_team(), reference=f"{registry.host}/team/other:other"))
    _base, own = layers_of(job.image)
    LayerFiles.objects.filter(layer=own).delete()  # as a snapshot from before indexing
    FileEntry.objects.filter(layer=own).delete()
    get_store().snapshots.remove(own.chain_id)
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 layers not indexed"):
        call_command("index_files", "--all", stderr=err, stdout=io.StringIO())
    assert "no snapshot" in err.getvalue()
    assert not FileEntry.objects.filter(layer=own).exists()


def test_removing_an_image_removes_its_layers_index(registry: Registry, seed: Seed) -> None:
    job = done(image_pull(team=default_team(), reference=f"{registry.host}/team/other:other"))
    layers = layers_of(job.image)
    assert FileEntry.objects.filter(layer__in=layers).exists()
    image_remove(image=f"{registry.host}/team/other:other")
    assert not Layer.objects.filter(pk__in=[layer.pk for layer in layers]).exists()
    assert not FileEntry.objects.filter(layer_id__in=[layer.pk for layer in layers]).exists()
    assert not LayerFiles.objects.exists()


def test_garbage_collection_removes_the_index_of_the_layers_it_deletes(
    registry: Registry, seed: Seed
) -> None:
    job = done(image_pull(team=default_team(), reference=f"{registry.host}/team/other:other"))
    layers = layers_of(job.image)
    assert job.image is not None
    Tag.objects.filter(image=job.image).delete()
    Image.objects.filter(pk=job.image.pk).delete()  # the layers are referenced by nothing now
    store_gc(dry_run=False)
    assert not Layer.objects.filter(pk__in=[layer.pk for layer in layers]).exists()
    assert not FileEntry.objects.filter(layer_id__in=[layer.pk for layer in layers]).exists()
    assert not LayerFiles.objects.exists()
