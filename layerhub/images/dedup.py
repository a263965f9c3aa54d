"""Files stored twice: the report, and how hardlinks made by ``dedup`` count in sizes.

Definitions (bytes, from the file index and the DedupInode/DedupLink rows):
- a *duplicate* is a regular file (index kind ``f``; a hardlink's name is not counted again)
  whose content another snapshot also holds (``duplicates.duplicated_contents``: empty files
  are never duplicates); two paths of one snapshot with one content are not duplicates of
  each other (dedup never links them: see ``layerhub.engine.dedup``);
- the store's *stored twice* bytes are, over every content held by more than one snapshot,
  its size times (the snapshots holding it - 1), minus what dedup's hardlinks already store
  once (``dedup_saved_bytes``): what linking every copy would still free, at most;
- an image's *duplicate* bytes are those of the files of its layers whose content another
  snapshot (of this image or any other) holds too;
- two images *share* a content when a file of each holds it, from different snapshots; their
  share is the part of their files (by count, both images together) whose content the other
  holds, and the bytes they share are each shared content's size once (what storing it once
  saves). Pairs that use no common layer are the news: "debian:bookworm-20261101 and
  debian:bookworm-20261115 share no layer but 96% of their files (113 MB)".

How dedup's hardlinks count in sizes: ``layerhub.images.dedup_links``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db.models import Count, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from layerhub.core.humanize import human_size
from layerhub.engine.file_index import FILE

from .dedup_links import dedup_saved_bytes
from .duplicates import duplicated_contents
from .listing import display_name, images_named
from .models import FileEntry, Image, ImageLayer, Repository

# pairs of images the report lists at most (the best shares first)
MAX_PAIRS = 50


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageDuplicates:
    """One image's files whose content another snapshot holds too."""

    image_id: int
    name: str
    files: int  # regular files of its layers
    file_bytes: int
    duplicate_files: int
    duplicate_bytes: int

    @property
    def percent(self) -> float:
        """Duplicate bytes as a share of the image's file bytes."""
        return 100.0 * self.duplicate_bytes / self.file_bytes if self.file_bytes else 0.0


@dataclass(frozen=True)
class ImagePair:
    """Two images holding the same contents in different snapshots."""

    first: str
    second: str
    shared_files: int  # files of either image whose content the other holds
    total_files: int  # files of both
    shared_bytes: int  # each shared content once: what storing it once saves
    share_layers: bool  # whether they also use a common layer

    @property
    def percent(self) -> float:
        """The shared files as a share of both images' files."""
        return 100.0 * self.shared_files / self.total_files if self.total_files else 0.0

    def sentence(self) -> str:
        """The pair, for people."""
        layers = "share layers and" if self.share_layers else "share no layer but"
        return (
            f"{self.first} and {self.second} {layers} {self.percent:.0f}% of their files "
            f"({human_size(self.shared_bytes)})"
        )


@dataclass
class DuplicatesReport:
    """Files stored twice, in the store and per image (see the module docstring)."""

    contents: int = 0  # distinct contents held by more than one snapshot
    duplicate_bytes: int = 0  # bytes of every file holding such a content
    copy_bytes: int = 0  # the copies beyond the first: size x (snapshots - 1)
    saved_bytes: int = 0  # what dedup's hardlinks store once already
    images: list[ImageDuplicates] = field(default_factory=list)
    pairs: list[ImagePair] = field(default_factory=list)

    @property
    def stored_twice_bytes(self) -> int:
        """The copies dedup has not linked yet: what a dedup may free, at most."""
        return max(self.copy_bytes - self.saved_bytes, 0)


def duplicates_report(
    images: QuerySet[Image] | None = None,
    repositories: QuerySet[Repository] | None = None,
    *,
    max_pairs: int = MAX_PAIRS,
) -> DuplicatesReport:
    """The duplicates report for the store, with ``images`` (default: every image; pass only
    those the user may see, and the ``repositories`` they may see, which name them) each
    described and paired."""
    dup_contents = duplicated_contents()
    report = DuplicatesReport(saved_bytes=dedup_saved_bytes())
    # (sha256 -> size, {layer: files}) of every content more than one snapshot holds
    size_of: dict[bytes, int] = {}
    holders: dict[bytes, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    rows = FileEntry.objects.filter(
        kind=FILE, sha256__in=dup_contents.values("sha256")
    ).values_list("sha256", "layer_id", "size")
    for sha, layer, size in rows.iterator(chunk_size=5000):
        key = bytes(sha or b"")
        size_of[key] = size
        holders[key][layer] += 1
        report.duplicate_bytes += size
    report.contents = len(size_of)
    report.copy_bytes = sum(size_of[k] * (len(h) - 1) for k, h in holders.items())

    chosen = list(images_named(Image.objects.all() if images is None else images, repositories))
    if not chosen:
        return report
    layers_of: dict[int, set[int]] = defaultdict(set)
    for image_id, layer_id in ImageLayer.objects.filter(image__in=chosen).values_list(
        "image_id", "layer_id"
    ):
        layers_of[image_id].add(layer_id)
    all_layers = set().union(*layers_of.values()) if layers_of else set()
    totals = {
        row["layer_id"]: (row["n"], row["bytes"])
        for row in FileEntry.objects.filter(kind=FILE, layer_id__in=all_layers)
        .values("layer_id")
        .annotate(n=Count("pk"), bytes=Coalesce(Sum("size"), Value(0)))
    }
    # per layer: the duplicated contents it holds (and how many of its files hold each)
    contents_of: dict[int, dict[bytes, int]] = defaultdict(dict)
    for key, held in holders.items():
        for layer, count in held.items():
            if layer in all_layers:
                contents_of[layer][key] = count
    names = {image.pk: display_name(image) for image in chosen}
    image_contents: dict[int, dict[bytes, int]] = {}
    for image in chosen:
        files = file_bytes = dup_files = dup_bytes = 0
        mine: dict[bytes, int] = defaultdict(int)
        for layer in layers_of.get(image.pk, ()):
            n, b = totals.get(layer, (0, 0))
            files += n
            file_bytes += b
            for key, count in contents_of.get(layer, {}).items():
                dup_files += count
                dup_bytes += count * size_of[key]
                mine[key] += count
        image_contents[image.pk] = mine
        report.images.append(
            ImageDuplicates(image.pk, names[image.pk], files, file_bytes, dup_files, dup_bytes)
        )
    report.images.sort(key=lambda d: (-d.duplicate_bytes, d.name))
    report.pairs = _pairs(chosen, names, layers_of, totals, holders, image_contents, size_of)[
        :max_pairs
    ]
    return report


def _pairs(
    chosen: Sequence[Image],
    names: dict[int, str],
    layers_of: dict[int, set[int]],
    totals: dict[int, tuple[int, int]],
    holders: dict[bytes, dict[int, int]],
    image_contents: dict[int, dict[bytes, int]],
    size_of: dict[bytes, int],
) -> list[ImagePair]:
    # images holding each content, from layers of their own (another image's copy through a
    # layer both use is not a second copy)
    by_content: dict[bytes, list[int]] = defaultdict(list)
    for image_id, contents in image_contents.items():
        for key in contents:
            by_content[key].append(image_id)
    shared: dict[tuple[int, int], set[bytes]] = defaultdict(set)
    for key, ids in by_content.items():
        if len(ids) < 2 or len(holders[key]) < 2:
            continue
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                a_layers = {la for la in holders[key] if la in layers_of[a]}
                b_layers = {lb for lb in holders[key] if lb in layers_of[b]}
                if a_layers - b_layers or b_layers - a_layers:  # two snapshots hold it
                    shared[(a, b) if a < b else (b, a)].add(key)
    files = {i: sum(totals.get(la, (0, 0))[0] for la in layers_of.get(i, ())) for i in names}
    pairs = []
    for (a, b), keys in shared.items():
        count = sum(image_contents[a][k] + image_contents[b][k] for k in keys)
        pairs.append(
            ImagePair(
                first=names[a],
                second=names[b],
                shared_files=count,
                total_files=files[a] + files[b],
                shared_bytes=sum(size_of[k] for k in keys),
                share_layers=bool(layers_of[a] & layers_of[b]),
            )
        )
    pairs.sort(key=lambda p: (p.share_layers, -p.percent, -p.shared_bytes, p.first, p.second))
    return pairs


def image_duplicate_bytes(image: Image) -> int:
    """One image's duplicate bytes (its row of ``duplicates_report``)."""
    return (
        duplicates_report(Image.objects.filter(pk=image.pk), max_pairs=0).images[0].duplicate_bytes
    )


__all__ = [
    "DuplicatesReport",
    "ImageDuplicates",
    "ImagePair",
    "duplicates_report",
    "image_duplicate_bytes",
]
