"""Reads behind the images pages: the ``docker images`` table (one row per tag, an untagged
image once as ``<none>``) and an image's page, each in a few queries whatever the catalog's
size. Sizes come from ``layerhub.images.sizes``; nothing here loops over the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import (
    CharField,
    Count,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
    Window,
)
from django.db.models.functions import Coalesce, Concat, RowNumber
from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.engine.digest import short_id
from layerhub.engine.reference import Reference
from layerhub.images.models import Image, ImageLayer, Layer, Repository, Tag
from layerhub.images.sizes import images_with_sizes
from layerhub.jobs.models import Job

# sort keys a page may ask for, and the annotation each sorts on
SORTS: dict[str, str] = {
    "repository": "repo_name",
    "tag": "tag_name",
    "created": "created",
    "size": "size",
    "shared": "shared_size",
    "unique": "unique_size",
    "compressed": "download_size",
    "layers": "layer_count",
}
DEFAULT_SORT = "-created"
# how many other images a layer lists on an image's page (the rest are counted)
SHARERS_SHOWN = 5


def familiar_repository(registry: str | None, name: str | None) -> str:
    """``debian`` or ``127.0.0.1:5000/team/app``, as ``docker images`` prints REPOSITORY."""
    if not registry or not name:
        return "<none>"
    return Reference(registry, name, None, None).familiar


def _first_repository(field_name: str) -> Subquery:
    """A field of the first repository an (untagged) outer image was pulled from."""
    return Subquery(
        Repository.objects.filter(images=OuterRef("pk"))
        .order_by("registry", "name")
        .values(field_name)[:1],
        output_field=CharField(),
    )


def _last_unpack(field_name: str) -> Subquery:
    """A field of the outer image's newest unpack job."""
    return Subquery(
        Job.objects.filter(image=OuterRef("pk"), kind=Job.Kind.UNPACK)
        .order_by("-created_at", "-id")
        .values(field_name)[:1]
    )


def normalize_sort(sort: str | None) -> str:
    """``sort`` if it names a column (``size``, ``-size``), else the default (newest first)."""
    if sort and sort.lstrip("-") in SORTS:
        return sort
    return DEFAULT_SORT


def image_table(images: QuerySet[Image], *, search: str = "", sort: str = DEFAULT_SORT) -> Any:
    """``images`` as ``docker images`` lists them: one row per tag (an image with three tags
    is three rows), an untagged image once with tag ``<none>`` and the repository it came
    from. Each row is an Image with its sizes (``images_with_sizes``) and ``tag_pk``,
    ``tag_name``, ``repo_registry``, ``repo_name`` and ``unpack_state`` / ``unpack_job``
    (its newest unpack job), all from one query (a LEFT JOIN on tags, Subqueries for the
    rest).

    ``search`` matches anywhere in the full reference (``docker.io/library/debian:12``) or the
    start of the image ID; ``sort`` is a key of SORTS, ``-`` first for descending. Ties are
    broken by the image's pk, then the tag's.
    """
    rows = images_with_sizes(images).annotate(
        tag_pk=F("tags__pk"),
        tag_name=F("tags__name"),
        repo_registry=Coalesce(F("tags__repository__registry"), _first_repository("registry")),
        repo_name=Coalesce(F("tags__repository__name"), _first_repository("name")),
        unpack_state=_last_unpack("state"),
        unpack_job=_last_unpack("pk"),
    )
    search = search.strip()
    if search:
        rows = rows.annotate(
            ref_text=Concat(
                Coalesce("repo_registry", Value("")),
                Value("/"),
                Coalesce("repo_name", Value("")),
                Value(":"),
                Coalesce("tag_name", Value("")),
                output_field=CharField(),
            )
        )
        match = Q(ref_text__icontains=search)
        hex_text = search.lower().removeprefix("sha256:")
        if hex_text and all(c in "0123456789abcdef" for c in hex_text):
            match |= Q(config_digest__startswith=f"sha256:{hex_text}")
        rows = rows.filter(match)
    sort = normalize_sort(sort)
    column = F(SORTS[sort.lstrip("-")])
    # no creation date and no tag sort last, whichever the direction
    order = column.desc(nulls_last=True) if sort.startswith("-") else column.asc(nulls_last=True)
    return rows.order_by(order, "-pk", F("tag_pk").asc(nulls_last=True))


def label_rows(rows: list[Any]) -> list[Any]:
    """Give each row of an ``image_table`` page ``repository`` and ``tag`` as people read
    them (``debian``, ``<none>``) and ``created_ago``; no query."""
    now = timezone.now()
    for row in rows:
        row.repository = familiar_repository(row.repo_registry, row.repo_name)
        row.tag = row.tag_name or "<none>"
        # "3 weeks ago", as `docker images` prints CREATED: the largest unit alone
        row.created_ago = timesince(row.created, now, depth=1) if row.created else None
    return rows


@dataclass(frozen=True)
class Sharer:
    """Another image using a layer: its pk (for the link) and its name."""

    pk: int
    name: str


@dataclass
class LayerRow:
    """One layer of an image's page: its row, how many images use it and a few of them."""

    position: int
    layer: Layer
    users: int
    sharers: list[Sharer] = field(default_factory=list)

    @property
    def chain_hex(self) -> str:
        """The ChainID's hex, as the layer page's address takes it."""
        return self.layer.chain_id.removeprefix("sha256:")

    @property
    def more_sharers(self) -> int:
        """Other images using this layer beyond those listed."""
        return max(self.users - 1 - len(self.sharers), 0)


def _users_of_layer() -> Subquery:
    return Subquery(
        ImageLayer.objects.filter(layer=OuterRef("layer"))
        .values("layer")
        .annotate(n=Count("image", distinct=True))
        .values("n"),
        output_field=IntegerField(),
    )


def images_named(images: QuerySet[Image]) -> QuerySet[Image]:
    """``images`` each with ``display_name``-ready fields of its first tag (or repository)
    as Subquery annotations: one query for any number of images."""
    first_tag = Tag.objects.filter(image=OuterRef("pk")).order_by("repository", "name")
    return images.annotate(
        first_registry=Coalesce(
            Subquery(first_tag.values("repository__registry")[:1], output_field=CharField()),
            _first_repository("registry"),
        ),
        first_name=Coalesce(
            Subquery(first_tag.values("repository__name")[:1], output_field=CharField()),
            _first_repository("name"),
        ),
        first_tag=Subquery(first_tag.values("name")[:1], output_field=CharField()),
    )


def display_name(image: Any) -> str:
    """An image from ``images_named`` as people call it: ``team/app:v1``, or
    ``team/app (<image ID>)`` untagged, or its image ID."""
    if getattr(image, "first_name", None):
        repository = familiar_repository(image.first_registry, image.first_name)
        if image.first_tag:
            return f"{repository}:{image.first_tag}"
        return f"{repository} ({image.image_id})"
    return str(image.image_id)


def image_layers(image: Image) -> list[LayerRow]:
    """The image's layers, bottom first, each with how many images use it and up to
    SHARERS_SHOWN of the others (three queries, however widely a layer is shared)."""
    rows = list(
        ImageLayer.objects.filter(image=image)
        .select_related("layer")
        .annotate(users=_users_of_layer())
        .order_by("position")
    )
    layer_ids = [row.layer_id for row in rows]
    # at most SHARERS_SHOWN other images per layer: a window, so a base under 10,000 images
    # costs the same as one under two
    sharing = list(
        ImageLayer.objects.filter(layer__in=layer_ids)
        .exclude(image=image)
        .annotate(rank=Window(RowNumber(), partition_by=[F("layer")], order_by=[F("image").desc()]))
        .filter(rank__lte=SHARERS_SHOWN)
        .values_list("layer", "image")
    )
    named = {
        other.pk: Sharer(other.pk, display_name(other))
        for other in images_named(Image.objects.filter(pk__in={i for _, i in sharing}))
    }
    by_layer: dict[int, list[Sharer]] = {}
    for layer_id, image_id in sharing:
        by_layer.setdefault(layer_id, []).append(named[image_id])
    return [
        LayerRow(row.position, row.layer, row.users or 1, by_layer.get(row.layer_id, []))
        for row in rows
    ]


def image_short_digest(digest: str) -> str:
    """``sha256:3f4e1a2b9c0d``: a digest shortened the way IDs are, keeping its algorithm."""
    algorithm, _, _ = digest.partition(":")
    return f"{algorithm}:{short_id(digest)}"


def image_pull_reference(image: Image) -> str | None:
    """What pulling ``image`` again asks the registry for: its first tag, else its
    repository at its manifest digest; None for an image with neither (imported from an
    archive without names)."""
    tag = image.tags.select_related("repository").order_by("repository", "name").first()
    if tag is not None:
        return f"{tag.repository}:{tag.name}"
    repository = image.repositories.order_by("registry", "name").first()
    if repository is not None:
        return f"{repository}@{image.manifest_digest}"
    return None


def image_reference_text(image: Image) -> str:
    """The reference a job about ``image`` is filed under: what pulling it again would ask
    for, else its image ID."""
    return image_pull_reference(image) or image.image_id
