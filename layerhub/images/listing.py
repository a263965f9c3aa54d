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
    Sum,
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


def _first_repository(
    field_name: str, repositories: QuerySet[Repository] | None = None
) -> Subquery:
    """A field of the first repository (of ``repositories``: those the user sees) an
    (untagged) outer image was pulled from."""
    return Subquery(
        (Repository.objects.all() if repositories is None else repositories)
        .filter(images=OuterRef("pk"))
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


def _shared_layers() -> QuerySet[Any]:
    """The layers at least two images use: one GROUP BY, uncorrelated, so the database works
    it out once per query (sizes.py's definition of shared, by ChainID). Rows are counted: an
    image holds a ChainID at one position only."""
    return (
        ImageLayer.objects.values("layer")
        .annotate(users=Count("pk"))
        .filter(users__gt=1)
        .values("layer")
    )


def _bytes_in_layers(*, shared: bool) -> Coalesce:
    """The outer image's unpacked bytes in shared (or in unshared) layers: the same figure as
    ``images_with_sizes``' shared_size / unique_size, in a form cheap enough to sort every
    image by (a membership test against ``_shared_layers`` instead of counting each layer's
    users once per image that uses it)."""
    rows = ImageLayer.objects.filter(image=OuterRef("pk"))
    in_shared = Q(layer__in=_shared_layers())
    rows = rows.filter(in_shared) if shared else rows.exclude(in_shared)
    return Coalesce(
        Subquery(
            rows.values("image")
            .annotate(total=Sum(Coalesce("layer__unpacked_size", Value(0))))
            .values("total"),
            output_field=IntegerField(),
        ),
        Value(0),
    )


def image_table(
    images: QuerySet[Image],
    *,
    search: str = "",
    sort: str = DEFAULT_SORT,
    repositories: QuerySet[Repository] | None = None,
    names: list[int] | None = None,
) -> Any:
    """The keys of ``images``' rows as ``docker images`` lists them, in order: one row per tag
    (an image with three tags is three rows), an untagged image once (its tag ``None``).
    A values list of ``(image pk, tag pk)``: paginate it, then ``table_rows`` reads one page.

    ``search`` matches anywhere in the full reference (``docker.io/library/debian:12``) or the
    start of the image ID; ``sort`` is a key of SORTS, ``-`` first for descending. Ties are
    broken by the image's pk, then the tag's. Only the column sorted on is computed for
    every row; the sizes shown are read for the page's rows alone. With ``repositories``
    (those the user sees) and ``names`` (their primary keys),
    only their tags and names are rows: another team's names of a shared image are never
    shown.
    """
    rel = "tags"
    rows = images.annotate(
        tag_pk=F(f"{rel}__pk"),
        tag_name=F(f"{rel}__name"),
        repo_registry=Coalesce(
            F(f"{rel}__repository__registry"), _first_repository("registry", repositories)
        ),
        repo_name=Coalesce(F(f"{rel}__repository__name"), _first_repository("name", repositories)),
    )
    if names is not None:
        # another team's tags are no rows: an image is listed under the tags the user may
        # read (or once, untagged)
        rows = rows.annotate(tag_repository=F(f"{rel}__repository_id")).filter(
            Q(tag_pk__isnull=True) | Q(tag_repository__in=names)
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
    key = SORTS[sort.lstrip("-")]
    if key == "shared_size":
        rows = rows.annotate(shared_size=_bytes_in_layers(shared=True))
    elif key == "unique_size":
        rows = rows.annotate(unique_size=_bytes_in_layers(shared=False))
    elif key in ("size", "download_size", "layer_count"):
        sized = images_with_sizes(Image.objects.filter(pk=OuterRef("pk")))
        rows = rows.annotate(**{key: Subquery(sized.values(key)[:1])})
    column = F(key)
    # no creation date and no tag sort last, whichever the direction
    order = column.desc(nulls_last=True) if sort.startswith("-") else column.asc(nulls_last=True)
    return rows.order_by(order, "-pk", F("tag_pk").asc(nulls_last=True)).values_list("pk", "tag_pk")


@dataclass(frozen=True)
class TableRow:
    """One line of the images table: an image (with its sizes and ``unpack_state``), the tag
    this line is for (None: untagged) and the names people read."""

    image: Any
    tag: Tag | None
    repository: str  # ``debian``, ``127.0.0.1:5000/team/app`` or ``<none>``
    tag_name: str  # the tag or ``<none>``
    created_ago: str | None  # "3 weeks", as `docker images` prints CREATED


def table_rows(
    keys: list[tuple[int, int | None]], repositories: QuerySet[Repository] | None = None
) -> list[TableRow]:
    """The rows of one page of ``image_table`` keys: the images with their sizes
    (``images_with_sizes``) and newest unpack state, and the tags, in two queries."""
    images = {
        image.pk: image
        for image in images_with_sizes(
            Image.objects.filter(pk__in={pk for pk, _ in keys})
        ).annotate(
            unpack_state=_last_unpack("state"),
            first_registry=_first_repository("registry", repositories),
            first_name=_first_repository("name", repositories),
        )
    }
    tag_pks = {tag_pk for _, tag_pk in keys if tag_pk is not None}
    tags = Tag.objects.select_related("repository").in_bulk(tag_pks) if tag_pks else {}
    now = timezone.now()
    rows = []
    for pk, tag_pk in keys:
        image = images[pk]
        tag = tags.get(tag_pk) if tag_pk is not None else None
        if tag is not None:
            repository = familiar_repository(tag.repository.registry, tag.repository.name)
        else:
            repository = familiar_repository(image.first_registry, image.first_name)
        # "3 weeks ago", as `docker images` prints CREATED: the largest unit alone
        ago = timesince(image.created, now, depth=1) if image.created else None
        rows.append(TableRow(image, tag, repository, tag.name if tag else "<none>", ago))
    return rows


@dataclass(frozen=True)
class Sharer:
    """Another image using a layer: its pk (for the link) and its name."""

    pk: int
    name: str


@dataclass
class LayerRow:
    """One layer of an image's page: its row, how many images use it (all of them), how
    many of those the user sees (``yours``, this image left out; None: every one) and a few
    of those."""

    position: int
    layer: Layer
    users: int
    sharers: list[Sharer] = field(default_factory=list)
    yours: int | None = None

    @property
    def chain_hex(self) -> str:
        """The ChainID's hex, as the layer page's address takes it."""
        return self.layer.chain_id.removeprefix("sha256:")

    @property
    def visible_others(self) -> int:
        """Other images using this layer that the user sees."""
        return self.users - 1 if self.yours is None else self.yours

    @property
    def more_sharers(self) -> int:
        """Other images the user sees using this layer beyond those listed."""
        return max(self.visible_others - len(self.sharers), 0)

    @property
    def others(self) -> bool:
        """Whether images the user cannot see use this layer too (they are counted in
        ``users``, never named)."""
        return self.users - 1 > self.visible_others


def _users_of_layer() -> Subquery:
    # rows, not distinct images: an image holds a ChainID at one position only (the ChainID
    # names the whole stack below it), and counting rows spares the database a sort
    return Subquery(
        ImageLayer.objects.filter(layer=OuterRef("layer"))
        .order_by()  # the model's ordering (by image) would join images and group by them
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )


def readable_tags(repositories: QuerySet[Repository] | None = None) -> QuerySet[Tag]:
    """Tags with their repositories, only those of ``repositories`` (the ones the user may
    read, ``named_by``; None: all), for the prefetches that name images: another team's name
    of a shared image is never shown."""
    tags = Tag.objects.select_related("repository")
    return tags if repositories is None else tags.filter(repository__in=repositories)


def images_named(
    images: QuerySet[Image], repositories: QuerySet[Repository] | None = None
) -> QuerySet[Image]:
    """``images`` each with ``display_name``-ready fields of its first tag (or repository;
    of ``repositories``, those the user sees, if given) as Subquery annotations: one query
    for any number of images."""
    first_tag = Tag.objects.filter(image=OuterRef("pk")).order_by("repository", "name")
    if repositories is not None:
        first_tag = first_tag.filter(repository__in=repositories)
    return images.annotate(
        first_registry=Coalesce(
            Subquery(first_tag.values("repository__registry")[:1], output_field=CharField()),
            _first_repository("registry", repositories),
        ),
        first_name=Coalesce(
            Subquery(first_tag.values("repository__name")[:1], output_field=CharField()),
            _first_repository("name", repositories),
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


def image_layers(
    image: Image,
    visible: QuerySet[Image] | None = None,
    repositories: QuerySet[Repository] | None = None,
) -> list[LayerRow]:
    """The image's layers, bottom first, each with how many images use it (all of them: the
    figure must be true) and up to SHARERS_SHOWN of the others, taken from ``visible`` (the
    images the user sees, counted in ``yours``) and named from ``repositories`` (four queries,
    however widely a layer is shared)."""
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
        .filter(**({} if visible is None else {"image__in": visible}))
        .exclude(image=image)
        .annotate(rank=Window(RowNumber(), partition_by=[F("layer")], order_by=[F("image").desc()]))
        .filter(rank__lte=SHARERS_SHOWN)
        .values_list("layer", "image")
    )
    named = {
        other.pk: Sharer(other.pk, display_name(other))
        for other in images_named(
            Image.objects.filter(pk__in={i for _, i in sharing}), repositories
        )
    }
    by_layer: dict[int, list[Sharer]] = {}
    for layer_id, image_id in sharing:
        by_layer.setdefault(layer_id, []).append(named[image_id])
    yours: dict[int, int] | None = None
    if visible is not None:
        # how many of the images using each layer the user sees: "shared with 3 of your
        # images and others" names none of the others
        yours = dict(
            ImageLayer.objects.filter(layer__in=layer_ids, image__in=visible)
            .exclude(image=image)
            .order_by()
            .values("layer")
            .annotate(n=Count("pk"))
            .values_list("layer", "n")
        )
    return [
        LayerRow(
            row.position,
            row.layer,
            row.users or 1,
            by_layer.get(row.layer_id, []),
            None if yours is None else yours.get(row.layer_id, 0),
        )
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
