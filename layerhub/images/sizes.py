"""Sizes that add up, read from the database: per image (SIZE, SHARED SIZE, UNIQUE SIZE as
``docker system df -v`` defines them), for the whole store (logical vs physical, savings), and
what deleting an image frees.

Definitions (bytes):
- a layer's size is its snapshot's: the sum of ``st_size`` of its regular files, a hardlinked
  file once (``Layer.unpacked_size``, recorded when the snapshot was made);
- an image's SIZE is the sum of its layers' sizes; SHARED SIZE the part in layers (by ChainID)
  that at least one other image also uses; UNIQUE SIZE the rest. SIZE = SHARED + UNIQUE;
- its download size is the sum of its layer blobs' compressed sizes (from the manifest);
- the store's logical total counts every image as if stored alone (its blobs: manifest,
  config, index and layers, and its snapshots); its physical total is what ``blobs/`` and
  ``snapshots/`` hold, each once: the sum of the Blob rows (one per file, written when the
  catalog records an image and removed with the file) and of the recorded snapshot sizes,
  less what ``dedup``'s hardlinks store once (``layerhub.images.dedup_links``: an inode shared by
  several snapshots counts once; a snapshot's, and so an image's, size stays logical);
- what deleting an image, tag or repository frees (``DeletePlan``) is computed from the same
  rows, and ``image_remove`` deletes exactly what the plan lists (a file dedup hardlinked
  into snapshots that stay frees nothing; its bytes go with its last link; a snapshot no
  host holds, its layer evicted from every host's cache, frees nothing).

Every figure is one aggregate query (or a few), whatever the number of images: pages call these,
never loop over rows in Python.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property

from django.db.models import (
    Case,
    Count,
    Exists,
    F,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Coalesce

from layerhub.accounts.models import Team
from layerhub.containers.models import Container
from layerhub.images.dedup_links import dedup_freed_delta, dedup_saved_bytes
from layerhub.images.leases import LIVE_STATES
from layerhub.images.models import Blob, Image, ImageLayer, Layer, Repository, Snapshot, Tag
from layerhub.jobs.models import Lease


def _used_elsewhere() -> Exists:
    """Whether another image uses the layer of the outer ImageLayer row. An EXISTS stops at
    the first other row (through the index on layer), where counting a base layer's users
    would read every image on that base, for every image on it."""
    return Exists(
        ImageLayer.objects.filter(layer=OuterRef("layer")).exclude(image=OuterRef("image"))
    )


def _sum_over_layers(*, shared: bool | None) -> Subquery:
    rows = ImageLayer.objects.filter(image=OuterRef("pk"))
    if shared is not None:
        rows = rows.filter(_used_elsewhere()) if shared else rows.filter(~_used_elsewhere())
    return Subquery(
        rows.values("image")
        .annotate(total=Sum(Coalesce("layer__unpacked_size", Value(0))))
        .values("total"),
        output_field=IntegerField(),
    )


def images_with_sizes(queryset: QuerySet[Image] | None = None) -> QuerySet[Image]:
    """``queryset`` (default: every image) annotated, without a JOIN fan-out, with:

    ``size``, ``shared_size``, ``unique_size`` (unpacked bytes; SIZE = SHARED + UNIQUE),
    ``download_size`` (compressed layer blobs), ``layer_count`` and ``pending_layers`` (layers
    whose snapshot is not recorded yet: their bytes are not in SIZE until they are).
    """
    queryset = Image.objects.all() if queryset is None else queryset
    per_image = ImageLayer.objects.filter(image=OuterRef("pk")).values("image")
    return queryset.annotate(
        size=Coalesce(_sum_over_layers(shared=None), Value(0)),
        shared_size=Coalesce(_sum_over_layers(shared=True), Value(0)),
        unique_size=Coalesce(_sum_over_layers(shared=False), Value(0)),
        download_size=Coalesce(
            Subquery(
                per_image.annotate(total=Sum("layer__size")).values("total"),
                output_field=IntegerField(),
            ),
            Value(0),
        ),
        layer_count=Coalesce(
            Subquery(per_image.annotate(n=Count("pk")).values("n"), output_field=IntegerField()),
            Value(0),
        ),
        pending_layers=Coalesce(
            Subquery(
                per_image.annotate(n=Count("pk", filter=Q(layer__unpacked_at__isnull=True))).values(
                    "n"
                ),
                output_field=IntegerField(),
            ),
            Value(0),
        ),
    )


@dataclass(frozen=True)
class StoreTotals:
    """The whole store, from the database: what images would take stored alone (logical)
    against what the store holds (physical)."""

    images: int
    layers: int  # distinct ChainIDs with a snapshot recorded
    blobs: int  # files in blobs/ (Blob rows)
    logical_bytes: int
    physical_blob_bytes: int
    physical_snapshot_bytes: int  # hardlinked inodes once
    dedup_bytes: int = 0  # what dedup's hardlinks save (part of savings_bytes)

    @property
    def physical_bytes(self) -> int:
        """What ``blobs/`` and ``snapshots/`` hold."""
        return self.physical_blob_bytes + self.physical_snapshot_bytes

    @property
    def savings_bytes(self) -> int:
        """What sharing saves: logical minus physical (never negative)."""
        return max(self.logical_bytes - self.physical_bytes, 0)

    @property
    def savings_percent(self) -> float:
        """Savings as a share of the logical total, 0 for an empty store."""
        return 100.0 * self.savings_bytes / self.logical_bytes if self.logical_bytes else 0.0


def _blob_size(digest_field: str) -> Coalesce:
    return Coalesce(
        Subquery(
            Blob.objects.filter(digest=OuterRef(digest_field)).values("size")[:1],
            output_field=IntegerField(),
        ),
        Value(0),
    )


def own_blob_bytes_refresh(images: QuerySet[Image]) -> int:
    """Record on each of ``images`` the bytes of its manifest, config and index blobs, from
    their Blob rows (after blob rows are written or their sizes corrected); the row count."""
    return images.update(
        own_blob_bytes=_blob_size("manifest_digest")
        + _blob_size("config_digest")
        + _blob_size("index_digest")
    )


def logical_bytes(images: QuerySet[Image]) -> int:
    """What ``images`` take as if each were stored alone (the logical total of
    ``store_totals`` over these images only): a team's usage against its quota."""
    layers = ImageLayer.objects.filter(image_id__in=images.values("pk")).aggregate(
        snapshots=Coalesce(Sum("layer__unpacked_size"), Value(0)),
        blobs=Coalesce(Sum("layer__size"), Value(0)),
    )
    own = images.aggregate(total=Coalesce(Sum("own_blob_bytes"), Value(0)))["total"]
    return int(layers["snapshots"] + layers["blobs"] + own)


def team_images(team: Team) -> QuerySet[Image]:
    """The images of ``team``'s catalog: named by one of its repositories, or brought in by
    it and named by none. Uncorrelated subqueries of primary keys: read once, not per
    image."""
    through = Image.repositories.through.objects
    named = through.filter(repository__team=team).values("image_id")
    unnamed = Q(team=team) & ~Q(pk__in=through.values("image_id"))
    return Image.objects.filter(Q(pk__in=named) | unnamed)


@dataclass(frozen=True)
class TeamUsage:
    """A team's images against its quota: their logical bytes (each image as if stored
    alone, what the quota counts) and the part of those in layers another image (of any
    team: the figure must be true) uses too, stored once for all of them."""

    logical_bytes: int
    shared_bytes: int
    quota_bytes: int | None

    @property
    def quota_percent(self) -> float:
        """Usage as a share of the quota, at most 100 (for a bar); 0 without a quota."""
        if self.quota_bytes is None:
            return 0.0
        if self.quota_bytes == 0:
            return 100.0 if self.logical_bytes else 0.0
        return min(100.0 * self.logical_bytes / self.quota_bytes, 100.0)

    @property
    def over_quota(self) -> bool:
        """Whether the images take more than the quota (it was lowered below them)."""
        return self.quota_bytes is not None and self.logical_bytes > self.quota_bytes

    @property
    def shared_percent(self) -> float:
        """The shared part as a share of the logical total, 0 for no images."""
        return 100.0 * self.shared_bytes / self.logical_bytes if self.logical_bytes else 0.0


def team_usage(team: Team) -> TeamUsage:
    """``team``'s logical total (``logical_bytes`` of ``team_images``) and how much of it
    is in shared layers (their unpacked and compressed bytes), in two aggregate queries."""
    images = team_images(team)
    # a layer another image also uses is one whose recorded image count is above one
    shared_layer = Q(layer__image_count__gt=1)
    layers = ImageLayer.objects.filter(image_id__in=images.values("pk")).aggregate(
        snapshots=Coalesce(Sum("layer__unpacked_size"), Value(0)),
        blobs=Coalesce(Sum("layer__size"), Value(0)),
        shared_snapshots=Coalesce(Sum("layer__unpacked_size", filter=shared_layer), Value(0)),
        shared_blobs=Coalesce(Sum("layer__size", filter=shared_layer), Value(0)),
    )
    own = images.aggregate(total=Coalesce(Sum("own_blob_bytes"), Value(0)))["total"]
    return TeamUsage(
        logical_bytes=int(layers["snapshots"] + layers["blobs"] + own),
        shared_bytes=int(layers["shared_snapshots"] + layers["shared_blobs"]),
        quota_bytes=team.quota_bytes,
    )


def store_totals() -> StoreTotals:
    """Logical and physical totals of the store, in five aggregate queries."""
    logical_layers = ImageLayer.objects.aggregate(
        snapshots=Coalesce(Sum("layer__unpacked_size"), Value(0)),
        blobs=Coalesce(Sum("layer__size"), Value(0)),
    )
    # each image's own manifest, config and index, as if no other image shared them
    per_image = Image.objects.aggregate(
        n=Count("pk"), total=Coalesce(Sum("own_blob_bytes"), Value(0))
    )
    physical_snapshots = Layer.objects.filter(unpacked_at__isnull=False).aggregate(
        n=Count("pk"), total=Coalesce(Sum("unpacked_size"), Value(0))
    )
    physical_blobs = Blob.objects.aggregate(n=Count("pk"), total=Coalesce(Sum("size"), Value(0)))
    linked = dedup_saved_bytes()
    return StoreTotals(
        images=per_image["n"],
        layers=physical_snapshots["n"],
        blobs=physical_blobs["n"],
        logical_bytes=logical_layers["snapshots"] + logical_layers["blobs"] + per_image["total"],
        physical_blob_bytes=physical_blobs["total"],
        physical_snapshot_bytes=physical_snapshots["total"] - linked,
        dedup_bytes=linked,
    )


@dataclass(frozen=True)
class DeletePlan:
    """What deleting an image (a tag, a repository) removes at once, and the exact bytes
    that frees.

    A blob or snapshot still used by another image, a container or a running job's lease is
    kept; ``held`` lists what only a lease keeps (garbage collection frees it later), and
    ``held_bytes`` their recorded size. ``snapshots`` is ordered top layer first (the order
    rows go in). ``containers`` names the containers standing on the images: the delete is
    refused until they are removed (``blocked``). An untag that leaves the image in place
    lists the tag in ``untagged`` and frees nothing.
    """

    blobs: list[tuple[str, int]] = field(default_factory=list)  # (digest, bytes)
    snapshots: list[tuple[str, int]] = field(default_factory=list)  # (ChainID, bytes)
    held: list[str] = field(default_factory=list)  # digests and ChainIDs
    held_bytes: int = 0
    images: list[str] = field(default_factory=list)  # image IDs (config digests) deleted
    untagged: list[str] = field(default_factory=list)  # "registry/repository:tag"
    containers: list[str] = field(default_factory=list)  # names of containers in the way
    # the layer rows that go (their snapshots: ``host_snapshots``)
    freed_layers: list[int] = field(default_factory=list, compare=False, repr=False)

    @cached_property
    def host_snapshots(self) -> dict[str, int]:
        """Each host's bytes of the snapshots that go (its Snapshot rows), by host name: read
        when asked (one query), and before the rows are deleted."""
        per_host: dict[str, int] = {}
        rows = Snapshot.objects.filter(layer_id__in=self.freed_layers).values_list("host", "size")
        for host, size in rows:
            per_host[host] = per_host.get(host, 0) + size
        return dict(sorted(per_host.items()))

    @property
    def frees_bytes(self) -> int:
        """The bytes the delete frees, to the byte (the blobs, and the snapshots as one host
        holds them: the figure of a single machine)."""
        return sum(size for _, size in self.blobs) + sum(size for _, size in self.snapshots)

    @property
    def blob_bytes(self) -> int:
        """The bytes of the blobs that go (stored once for every host)."""
        return sum(size for _, size in self.blobs)

    @property
    def several_hosts(self) -> bool:
        """Whether the snapshots that go are on more than one host (then each host's share
        is shown apart)."""
        return len(self.host_snapshots) > 1

    @property
    def blocked(self) -> bool:
        """Whether the delete is refused (containers use the image)."""
        return bool(self.containers)


def layers_with_ancestors(start: Iterable[int], parent_of: dict[int, int | None]) -> set[int]:
    """``start`` and every layer of ``parent_of`` below one of them: a layer stays while
    anything stands on it (what a delete plan and garbage collection keep)."""
    kept: set[int] = set()
    for pk in start:
        current: int | None = pk
        while current is not None and current in parent_of and current not in kept:
            kept.add(current)
            current = parent_of[current]
    return kept


def images_delete_plan(images: QuerySet[Image] | Iterable[Image]) -> DeletePlan:
    """What deleting all of ``images`` together frees: their blobs and snapshots that no
    other image, no layer left standing and no live lease holds.

    A few queries whatever the catalog holds; the rows read are the images' own layers. A
    queryset (say, every image no container uses) is passed to the database as a subquery,
    never as a list of ids, so any number of images fits in a query.
    """
    if isinstance(images, QuerySet):
        chosen_q = images.values_list("pk", flat=True)
        chosen = {
            image.pk: image
            for image in images.only("pk", "manifest_digest", "config_digest", "index_digest")
        }
    else:
        chosen = {image.pk: image for image in images}
        chosen_q = Image.objects.filter(pk__in=list(chosen)).values_list("pk", flat=True)
    if not chosen:
        return DeletePlan()
    containers = list(
        Container.objects.filter(image_id__in=chosen_q)
        .order_by("name")
        .values_list("name", flat=True)
    )
    layer_q = ImageLayer.objects.filter(image_id__in=chosen_q).values("layer_id")
    rows = list(
        ImageLayer.objects.filter(image_id__in=chosen_q)
        # a snapshot no host holds (never unpacked, or evicted everywhere) frees nothing
        .annotate(
            snapshot_bytes=Case(
                When(
                    Exists(Snapshot.objects.filter(layer_id=OuterRef("layer_id"))),
                    then=F("layer__unpacked_size"),
                ),
                default=0,
            )
        )
        .values_list(
            "layer_id",
            "position",
            "layer__chain_id",
            "layer__digest",
            "layer__parent_id",
            "snapshot_bytes",
        )
    )
    layers = {r[0]: r for r in rows}  # one entry per layer, whatever image it came from
    parent_of = {pk: r[4] for pk, r in layers.items()}
    chain_of = {pk: r[2] for pk, r in layers.items()}
    image_blobs: set[str] = set()
    for image in chosen.values():
        image_blobs.update(d for d in (image.manifest_digest, image.config_digest) if d)
        if image.index_digest:
            image_blobs.add(image.index_digest)
    digests = image_blobs | {r[3] for r in layers.values()}
    # live leases are few (what running jobs hold): read them all, match here
    leased = set(Lease.objects.filter(job__state__in=LIVE_STATES).values_list("key", flat=True)) & (
        digests | set(chain_of.values())
    )
    # layers something other than these images stands on: another image, or a layer row
    # above them that no image names (one a lease kept)
    used = set(
        ImageLayer.objects.filter(layer_id__in=layer_q)
        .exclude(image_id__in=chosen_q)
        .values_list("layer_id", flat=True)
        .distinct()
    )
    used |= set(
        Layer.objects.filter(parent_id__in=layer_q)
        .exclude(pk__in=layer_q)
        .values_list("parent_id", flat=True)
    )
    kept_for_use = layers_with_ancestors({pk for pk in used if pk is not None}, parent_of)
    kept = kept_for_use | layers_with_ancestors(
        {pk for pk, chain in chain_of.items() if chain in leased}, parent_of
    )
    freed = [pk for pk in layers if pk not in kept]
    # blobs another image names (as manifest, config or index), or a layer row that stays
    others = Image.objects.exclude(pk__in=chosen_q)
    mine = Image.objects.filter(pk__in=chosen_q)
    named: set[str] = set()
    for name in ("manifest_digest", "config_digest", "index_digest"):
        named |= set(
            others.filter(**{f"{name}__in": mine.values(name)}).values_list(name, flat=True)
        )
    layer_digests_q = Layer.objects.filter(pk__in=layer_q).values("digest")
    freed_set = set(freed)
    staying = {
        pk: d
        for pk, d in Layer.objects.filter(digest__in=layer_digests_q).values_list("pk", "digest")
        if pk not in freed_set
    }
    # a staying layer row outside these images' layers, or one kept for use, keeps its blob
    named |= {d for pk, d in staying.items() if pk not in layers or pk in kept_for_use}
    blob_kept_by_lease = {d for pk, d in staying.items() if pk in layers and pk not in kept_for_use}
    doomed = sorted(digests - named - leased - blob_kept_by_lease)
    held_blobs = sorted((digests - named) - set(doomed))
    sizes = dict(
        Blob.objects.filter(digest__in=layer_digests_q).values_list("digest", "size")
    ) | dict(Blob.objects.filter(digest__in=list(image_blobs)).values_list("digest", "size"))
    held_layers = sorted(kept - kept_for_use, key=lambda pk: -layers[pk][1])
    freed.sort(key=lambda pk: -layers[pk][1])  # top first
    linked = dedup_freed_delta([chain_of[pk] for pk in freed])
    return DeletePlan(
        freed_layers=list(freed),
        blobs=[(d, sizes.get(d, 0)) for d in doomed],
        snapshots=[
            (chain_of[pk], (layers[pk][5] or 0) + linked.get(chain_of[pk], 0)) for pk in freed
        ],
        held=[*held_blobs, *(chain_of[pk] for pk in held_layers)],
        held_bytes=sum(sizes.get(d, 0) for d in held_blobs)
        + sum(layers[pk][5] or 0 for pk in held_layers),
        images=sorted(image.config_digest for image in chosen.values()),
        containers=containers,
    )


def _untagging(plan: DeletePlan, tags: QuerySet[Tag]) -> DeletePlan:
    """``plan`` with the tags its images lose listed as untagged."""
    named = tags.select_related("repository").order_by("pk")
    return replace(plan, untagged=[f"{t.repository}:{t.name}" for t in named])


def image_delete_plan(image: Image) -> DeletePlan:
    """What deleting ``image`` (``rmi -f``: every tag and the image) frees at once."""
    return _untagging(images_delete_plan([image]), Tag.objects.filter(image=image))


def tag_delete_plan(tag: Tag) -> DeletePlan:
    """What ``rmi repository:tag`` does: only untag while the image has another tag, else
    delete the image (its plan)."""
    if Tag.objects.filter(image_id=tag.image_id).exclude(pk=tag.pk).exists():
        return DeletePlan(untagged=[f"{tag.repository}:{tag.name}"])
    return image_delete_plan(tag.image)


def tag_delete_plan_many(tags: Iterable[Tag]) -> DeletePlan:
    """Removing ``tags`` while their image stays (another team still names it): frees
    nothing."""
    return DeletePlan(untagged=[f"{tag.repository}:{tag.name}" for tag in tags])


def repository_delete_plan(repository: Repository) -> DeletePlan:
    """What deleting every image of ``repository`` (tagged there, or pulled from or pushed to
    it) frees, all at once."""
    images = list(
        Image.objects.filter(Q(tags__repository=repository) | Q(repositories=repository))
        .distinct()
        .order_by("pk")
    )
    return _untagging(images_delete_plan(images), Tag.objects.filter(image__in=images))
