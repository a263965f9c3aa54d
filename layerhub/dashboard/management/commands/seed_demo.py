"""``python manage.py seed_demo --images N``: a realistic demo catalog, metadata only.

Plans the catalog (``layerhub.dashboard.demo``: families of images on a few shared bases,
about five layers each) and writes it: layers with their recorded sizes, images with a config
summary, blob records, repositories, tags. No blob or snapshot is put in the store, so
``store_verify`` will report every seeded one as missing: seed a database of its own, not a
team's catalog.

Each kind of row is one bulk insert (per layer depth for layers, whose parent must exist
first), all in one transaction.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from layerhub.accounts.models import Team
from layerhub.dashboard.demo import (
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    CatalogPlan,
    ImagePlan,
    LayerPlan,
    history_entries,
    plan_catalog,
)
from layerhub.dashboard.demo_files import FileIndexSeed, family_of, seed_layer_files
from layerhub.images.models import Blob, Image, ImageLayer, Layer, Repository, Tag

MAX_IMAGES = 1_000_000
MAX_FILES = 1_000_000
# a layer this deep (0: a base) is an application's
APP_DEPTH = 4


def _write_layers(plan: CatalogPlan) -> None:
    """Layer rows, depth by depth, so each parent has its primary key before its children,
    each with the count of the planned images on it (every planned layer is new: its ChainID
    is salted)."""
    users = Counter(id(layer) for image in plan.images for layer in image.layers)
    by_depth: dict[int, list[LayerPlan]] = {}
    for layer in plan.layers:
        by_depth.setdefault(layer.depth, []).append(layer)
    for depth in sorted(by_depth):
        rows = [
            Layer(
                chain_id=layer.chain_id,
                parent=layer.parent.row if layer.parent else None,
                digest=layer.digest,
                diff_id=layer.diff_id,
                media_type=LAYER_MEDIA_TYPE,
                size=layer.size,
                unpacked_size=layer.unpacked_size,
                file_count=layer.file_count,
                unpacked_at=layer.created,
                image_count=users[id(layer)],
            )
            for layer in by_depth[depth]
        ]
        Layer.objects.bulk_create(rows, batch_size=2000)
        for layer, row in zip(by_depth[depth], rows, strict=True):
            layer.row = row


def _write_images(plan: CatalogPlan, salt: str) -> None:
    rows = []
    for index, image in enumerate(plan.images):
        config = {
            "config": image.run,
            "history": history_entries(image),
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in image.layers]},
            "created": image.created.isoformat(),
        }
        key = f"layerhub seed_demo {salt} image {index}"
        rows.append(
            Image(
                manifest_digest="sha256:" + hashlib.sha256(f"{key} manifest".encode()).hexdigest(),
                media_type=MANIFEST_MEDIA_TYPE,
                config_digest="sha256:" + hashlib.sha256(f"{key} config".encode()).hexdigest(),
                created=image.created,
                config=config,
                added_at=image.added_at,
                own_blob_bytes=_config_size(image) + _manifest_size(image),
            )
        )
    Image.objects.bulk_create(rows, batch_size=1000)
    for image, row in zip(plan.images, rows, strict=True):
        image.row = row


def _write_image_layers(plan: CatalogPlan) -> None:
    rows = [
        ImageLayer(image=image.row, layer=layer.row, position=position)
        for image in plan.images
        for position, layer in enumerate(image.layers)
    ]
    ImageLayer.objects.bulk_create(rows, batch_size=5000)


def _write_repositories_and_tags(plan: CatalogPlan, now: datetime) -> None:
    """Repositories (kept if they exist), each image's link to its repository, and its tag
    (a tag that exists already moves to the new image, as a re-pull moves it)."""
    names = {(image.registry, image.repository) for image in plan.images}
    # the demo catalog is the ``default`` team's (the migrations make it)
    team, _ = Team.objects.get_or_create(name="default")
    Repository.objects.bulk_create(
        [Repository(team=team, registry=registry, name=name) for registry, name in sorted(names)],
        ignore_conflicts=True,
    )
    repositories = {
        (r.registry, r.name): r
        for r in Repository.objects.filter(team=team, name__in={name for _, name in names})
    }
    through = Image.repositories.through
    links = []
    tags = []
    for image in plan.images:
        repository = repositories[(image.registry, image.repository)]
        assert image.row is not None
        links.append(through(image_id=image.row.pk, repository_id=repository.pk))
        if image.tag is not None:
            tags.append(Tag(repository=repository, name=image.tag, image=image.row, updated_at=now))
    through.objects.bulk_create(links, batch_size=5000)
    Tag.objects.bulk_create(
        tags,
        batch_size=2000,
        update_conflicts=True,
        unique_fields=["repository", "name"],
        update_fields=["image", "updated_at"],
    )


def _config_size(image: ImagePlan) -> int:
    return 1_200 + 180 * len(image.layers)  # plausible: a history entry and DiffID a layer


def _manifest_size(image: ImagePlan) -> int:
    return 400 + 160 * len(image.layers)  # plausible: a descriptor a layer


def _write_blobs(plan: CatalogPlan) -> None:
    """Blob records as a pull would leave them: each layer blob once however many ChainIDs
    name it, and each image's config and manifest (small, plausible sizes)."""
    rows: dict[str, Blob] = {}
    for layer in plan.layers:
        rows.setdefault(layer.digest, Blob(digest=layer.digest, size=layer.size, kind="layer"))
    for image in plan.images:
        assert image.row is not None
        rows[image.row.config_digest] = Blob(
            digest=image.row.config_digest, size=_config_size(image), kind="config"
        )
        rows[image.row.manifest_digest] = Blob(
            digest=image.row.manifest_digest, size=_manifest_size(image), kind="manifest"
        )
    Blob.objects.bulk_create(rows.values(), batch_size=5000)


def write_catalog(plan: CatalogPlan, *, salt: str, now: datetime) -> None:
    """Insert the planned rows, one bulk insert per kind of row, in one transaction."""
    with transaction.atomic():
        _write_layers(plan)
        _write_images(plan, salt)
        _write_image_layers(plan)
        _write_blobs(plan)
        _write_repositories_and_tags(plan, now)


def seed_demo(images: int, *, seed: int = 0, now: datetime | None = None) -> CatalogPlan:
    """Plan and write a demo catalog of ``images`` images; the plan, with its rows."""
    now = now or timezone.now()
    salt = uuid.uuid4().hex
    plan = plan_catalog(images, seed=seed, salt=salt, now=now)
    write_catalog(plan, salt=salt, now=now)
    return plan


def seed_file_indexes(
    plan: CatalogPlan, layers: int, files: int, *, seed: int = 0
) -> FileIndexSeed:
    """File indexes of about ``files`` entries for the first ``layers`` layers of ``plan``
    (bases first, as planned), each with its distribution from its base layer."""
    chosen = plan.layers[:layers]
    families: dict[int, str] = {}
    app_layers: set[int] = set()
    for layer in chosen:
        bottom = layer
        while bottom.parent is not None:
            bottom = bottom.parent
        assert layer.row is not None
        families[layer.row.pk] = family_of(bottom.created_by)
        if layer.depth >= APP_DEPTH:
            app_layers.add(layer.row.pk)
    rows = [layer.row for layer in chosen if layer.row is not None]
    return seed_layer_files(rows, files, families=families, app_layers=app_layers, seed=seed)


def _positive(text: str, option: str = "--images", most: int = MAX_IMAGES, least: int = 1) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CommandError(f"{option} must be a whole number, not {text!r}") from None
    if not least <= value <= most:
        raise CommandError(f"{option} must be between {least} and {most}, not {value}")
    return value


class Command(BaseCommand):
    help = (
        "Fill the catalog with a realistic demo: families of images on a few shared bases "
        "(Debian, Ubuntu, Alpine, UBI; runtimes on them; applications on the runtimes), about "
        "five layers each, with sizes, dates, repositories and tags. Metadata only: no blob or "
        "snapshot is written to the store (store_verify will report the seeded layers as "
        "missing), so seed a database of its own. Refuses to run when the catalog already has "
        "images, unless --force, which adds the demo beside them (new digests every run; a demo "
        "tag that exists already moves to the new image). --file-layers N --files M gives N "
        "layers a file index of about M entries each (distribution-like paths shared across "
        "a family, log-normal sizes, near-twin layers sharing content), straight into the "
        "database."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--images", type=str, default="300", help="how many images (default 300)"
        )
        parser.add_argument(
            "--seed", type=int, default=0, help="random seed: the same seed plans the same catalog"
        )
        parser.add_argument(
            "--file-layers",
            type=str,
            default="20",
            help="how many of the seeded layers get a file index (default 20; 0: none)",
        )
        parser.add_argument(
            "--files",
            type=str,
            default="300",
            help="entries in each of those file indexes (default 300; the benchmark: 10000)",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="seed even though the catalog already has images",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count = _positive(str(options["images"]))
        file_layers = _positive(str(options["file_layers"]), "--file-layers", MAX_IMAGES, 0)
        files = _positive(str(options["files"]), "--files", MAX_FILES)
        existing = Image.objects.count()
        if existing and not options["force"]:
            raise CommandError(
                f"the catalog already has {existing} image{'s' if existing != 1 else ''}; "
                "seed_demo fills an empty catalog (use --force to add the demo anyway)"
            )
        start = time.perf_counter()
        plan = seed_demo(count, seed=options["seed"])
        indexed = seed_file_indexes(plan, file_layers, files, seed=options["seed"])
        elapsed = time.perf_counter() - start
        repositories = len({(i.registry, i.repository) for i in plan.images})
        bases = len({id(i.layers[0]) for i in plan.images})
        self.stdout.write(
            f"seeded {len(plan.images)} images in {repositories} repositories on {bases} "
            f"base layer{'s' if bases != 1 else ''}, {len(plan.layers)} layers, "
            f"in {elapsed:.1f} s"
        )
        if indexed.layers:
            self.stdout.write(
                f"indexed {indexed.layers} layers: {indexed.entries} file entries describing "
                f"{indexed.content_bytes} bytes of files"
            )
