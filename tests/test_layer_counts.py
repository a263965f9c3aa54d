"""Each layer's recorded count of the images that use it: kept by the code that adds and
deletes image-layer rows, checked and repaired by store_verify."""

from __future__ import annotations

import hashlib
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from layerhub.images.layer_counts import (
    image_layers_add,
    layer_image_count_mismatches,
    layer_image_counts_refresh,
)
from layerhub.images.models import Image, ImageLayer, Layer
from layerhub.images.services.transfer import image_remove
from layerhub.images.verify import store_verify, store_verify_fix_sizes

pytestmark = pytest.mark.django_db


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(name: str, parent: Layer | None = None) -> Layer:
    return Layer.objects.create(
        chain_id=digest(f"chain {name}"),
        parent=parent,
        digest=digest(f"blob {name}"),
        diff_id=digest(f"diff {name}"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=10,
        unpacked_size=100,
        file_count=1,
        unpacked_at=timezone.now(),
    )


def bare_image(name: str) -> Image:
    return Image.objects.create(
        manifest_digest=digest(f"manifest {name}"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest(f"config {name}"),
        config={},
    )


def counts(*layers: Layer) -> list[int]:
    recorded = dict(Layer.objects.values_list("pk", "image_count"))
    return [recorded[lay.pk] for lay in layers]


def image_id(image: Image) -> str:
    return image.config_digest.removeprefix("sha256:")


def test_recording_and_removing_images_keeps_each_count() -> None:
    base = layer("base")
    app = layer("app", base)
    other = layer("other", base)
    one = bare_image("one")
    image_layers_add(image=one, layers=[base, app])
    two = bare_image("two")
    image_layers_add(image=two, layers=[base, other])
    three = bare_image("three")
    image_layers_add(image=three, layers=[base, app])
    assert counts(base, app, other) == [3, 2, 1]
    assert list(three.image_layers.values_list("layer_id", "position")) == [
        (base.pk, 0),
        (app.pk, 1),
    ]

    image_remove(image=image_id(one))
    assert counts(base, app, other) == [2, 1, 1]
    image_remove(image=image_id(two))  # other goes with it: its row is deleted
    assert not Layer.objects.filter(pk=other.pk).exists()
    assert counts(base, app) == [1, 1]
    assert layer_image_count_mismatches() == []


def test_a_stack_holding_a_layer_twice_is_refused_and_nothing_is_written() -> None:
    base = layer("base")
    img = bare_image("twice")
    with pytest.raises(ValueError, match="two positions"):
        image_layers_add(image=img, layers=[base, base])
    assert not ImageLayer.objects.exists()
    assert counts(base) == [0]


def test_verify_reports_a_count_that_drifted_and_fix_sizes_counts_again() -> None:
    base = layer("base")
    app = layer("app", base)
    for name in ("one", "two"):
        image_layers_add(image=bare_image(name), layers=[base, app])
    # rows deleted behind the code's back (an image deleted without releasing its layers),
    # and a count written by hand
    ImageLayer.objects.filter(image__manifest_digest=digest("manifest two"), layer=app).delete()
    Layer.objects.filter(pk=base.pk).update(image_count=7)
    assert layer_image_count_mismatches() == sorted([(base.chain_id, 7, 2), (app.chain_id, 2, 1)])

    report = store_verify()
    found = [(f.problem, f.what, f.key, f.detail) for f in report.findings if f.what == "layer"]
    assert sorted(found) == sorted(
        [
            ("count", "layer", base.chain_id, "recorded as used by 7 images, not 2"),
            ("count", "layer", app.chain_id, "recorded as used by 2 images, not 1"),
        ]
    )
    out = io.StringIO()
    with pytest.raises(CommandError):  # the seeded rows have no files: other findings stay
        call_command("store_verify", "--fix-sizes", stdout=out)
    assert f"fixed layer {base.chain_id}: counted 2 images" in out.getvalue()
    assert f"fixed layer {app.chain_id}: counted 1 image" in out.getvalue()
    assert counts(base, app) == [2, 1]
    assert layer_image_count_mismatches() == []
    assert not [f for f in store_verify().findings if f.what == "layer"]
    assert store_verify_fix_sizes(store_verify()) == []  # nothing left to count again


def test_a_recount_gives_every_layer_its_rows() -> None:
    base = layer("base")
    app = layer("app", base)
    unused = layer("unused", base)
    for name in ("one", "two", "three"):
        image = bare_image(name)
        ImageLayer.objects.create(image=image, layer=base, position=0)
        ImageLayer.objects.create(image=image, layer=app, position=1)
    Layer.objects.filter(pk=unused.pk).update(image_count=4)
    assert layer_image_counts_refresh() == 3
    assert counts(base, app, unused) == [3, 3, 0]
