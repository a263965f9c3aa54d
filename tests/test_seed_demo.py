"""manage.py seed_demo: a realistic catalog of families on shared bases, metadata only."""

from __future__ import annotations

import time
from collections import Counter
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db.models import Count, Sum

from layerhub.dashboard.demo import plan_catalog
from layerhub.engine.digest import chain_ids
from layerhub.images.models import Blob, Image, ImageLayer, Layer, Tag
from layerhub.images.sizes import images_with_sizes, store_totals

pytestmark = pytest.mark.django_db


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def test_seeds_n_images_in_families_on_shared_bases_quickly() -> None:
    start = time.perf_counter()
    out = seed("--images", "200")
    elapsed = time.perf_counter() - start

    assert elapsed < 5, f"200 images took {elapsed:.1f} s"
    assert Image.objects.count() == 200
    assert out.startswith("seeded 200 images in ")

    # a few bases carry everything, and the biggest carries a real family
    bottoms = Counter(ImageLayer.objects.filter(position=0).values_list("layer_id", flat=True))
    assert 3 <= len(bottoms) <= 5
    assert max(bottoms.values()) >= 40
    # about five layers an image
    counts = list(Image.objects.annotate(n=Count("image_layers")).values_list("n", flat=True))
    assert 4.5 <= sum(counts) / len(counts) <= 6.5
    assert min(counts) >= 1
    assert max(counts) <= 10
    # sharing goes above the bases too (runtimes, an application's dependencies)
    upper = ImageLayer.objects.filter(position__gt=0).values("layer").annotate(n=Count("pk"))
    assert upper.filter(n__gt=1).count() >= 10

    # so the store saves a lot, by the sizes module's own account
    totals = store_totals()
    assert totals.savings_percent > 50
    for image in images_with_sizes():
        size, shared, unique = (getattr(image, f) for f in ("size", "shared_size", "unique_size"))
        assert size == shared + unique
        assert getattr(image, "pending_layers") == 0  # noqa: B009 - an annotation mypy cannot see


def test_each_image_is_consistent_as_a_pull_would_record_it() -> None:
    seed("--images", "80")
    for image in Image.objects.prefetch_related("image_layers__layer", "tags"):
        layers = [row.layer for row in image.image_layers.order_by("position")]
        diff_ids = [layer.diff_id for layer in layers]
        # ChainIDs as the engine computes them, each layer's parent the layer below
        assert [layer.chain_id for layer in layers] == chain_ids(diff_ids)
        assert [layer.parent_id for layer in layers] == [None, *(lay.pk for lay in layers[:-1])]
        assert image.config["rootfs"]["diff_ids"] == diff_ids
        history = [h for h in image.config["history"] if not h.get("empty_layer")]
        assert len(history) == len(layers)
        assert image.created is not None
        assert image.created <= image.added_at
        for layer in layers:
            assert layer.unpacked_at is not None
            assert layer.unpacked_size is not None
            assert 0 < layer.size < layer.unpacked_size
    # tags name most images; an older release here and there is <none>
    tagged = Tag.objects.values("image").distinct().count()
    assert 0.8 * 80 <= tagged <= 80
    assert not Image.objects.filter(repositories__isnull=True).exists()
    # blob records as a pull leaves them: each image's config and manifest, each layer blob once
    recorded = set(Blob.objects.values_list("digest", flat=True))
    for image in Image.objects.all():
        assert {image.config_digest, image.manifest_digest} <= recorded
    assert set(Layer.objects.values_list("digest", flat=True)) <= recorded
    sizes = dict(Blob.objects.values_list("digest", "size"))
    for image in Image.objects.all():  # each image totals its own manifest and config
        assert image.own_blob_bytes == sizes[image.config_digest] + sizes[image.manifest_digest]
    totals = store_totals()
    assert totals.physical_blob_bytes == Blob.objects.aggregate(n=Sum("size"))["n"]
    assert 0 < totals.physical_bytes < totals.logical_bytes  # bases are shared: sharing saves


def test_a_small_catalog_is_the_first_bases_and_runtimes() -> None:
    seed("--images", "3")
    assert Image.objects.count() == 3
    assert Layer.objects.count() == 3  # debian, debian-slim and ubuntu: one layer each


def test_refuses_a_catalog_that_has_images_unless_forced() -> None:
    seed("--images", "10")
    with pytest.raises(CommandError, match=r"already has 10 images.*--force"):
        seed("--images", "10")
    assert Image.objects.count() == 10
    seed("--images", "10", "--force")
    assert Image.objects.count() == 20
    # new digests every run; a tag the first run made moved to the second run's image
    assert Layer.objects.count() == Layer.objects.values("chain_id").distinct().count()
    assert Tag.objects.count() == 10


@pytest.mark.parametrize("bad", ["0", "-3", "many", "2000000"])
def test_a_bad_count_is_an_error(bad: str) -> None:
    with pytest.raises(CommandError, match="--images"):
        seed("--images", bad)
    assert not Image.objects.exists()


def test_the_same_seed_plans_the_same_catalog() -> None:
    now = Image().added_at
    one = plan_catalog(150, seed=7, salt="a", now=now)
    two = plan_catalog(150, seed=7, salt="b", now=now)
    other = plan_catalog(150, seed=8, salt="a", now=now)
    shape = [([la.unpacked_size for la in i.layers], i.repository, i.tag) for i in one.images]
    assert shape == [
        ([la.unpacked_size for la in i.layers], i.repository, i.tag) for i in two.images
    ]
    assert shape != [
        ([la.unpacked_size for la in i.layers], i.repository, i.tag) for i in other.images
    ]
    assert one.images[0].layers[0].chain_id != two.images[0].layers[0].chain_id
