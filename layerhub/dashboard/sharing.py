"""The layer-sharing picture: which base carries whom, and how many bytes sharing saves.

One row per image, its layers left to right bottom first, each as wide as its unpacked size
(square-root scale, a minimum width so tiny layers stay visible). The rows are in the trie
order of their layer chains, so the images using a layer (by ChainID: the same layer over the
same layers below) are adjacent and the layer is drawn as ONE block spanning their rows,
labelled with its size, how many images use it and the bytes that saves (size x (users - 1)).

The catalog is cut into families, one per bottom layer, and into pages of rows in that order.
A page costs a fixed number of queries whatever the size of the catalog (eight, besides the
session's two): the families, the totals, the page's order (a per-image key of its layer chain,
computed by the database from the image-layer rows of only the families the page shows), the
page's images, their tags, their repositories, their layer rows, and those layers with how
many images use each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from django.db import connection
from django.db.models import (
    CharField,
    Count,
    Func,
    IntegerField,
    OuterRef,
    Prefetch,
    QuerySet,
    Subquery,
)
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_safe
from django_htmx.middleware import HtmxDetails

from layerhub.core.humanize import human_size
from layerhub.core.permissions import named_by, restrict
from layerhub.engine.reference import Reference
from layerhub.images.listing import readable_tags
from layerhub.images.models import Image, ImageLayer, Layer, Repository

ROWS_PER_PAGE = 50
MIN_ROWS, MAX_ROWS = 10, 200
# families listed in the index at the top; the rest are reached page by page
MAX_INDEXED_FAMILIES = 40

# geometry of the picture, in SVG user units (CSS pixels at scale 1)
ROW_HEIGHT = 22
ROW_PITCH = 24
LABEL_WIDTH = 250
LABEL_CHARS = 38
PLOT_LEFT = LABEL_WIDTH + 8
MIN_BLOCK = 6
PLOT_WIDTH = 820  # the longest row on a page fills this
SIZE_COLUMN = 70
FONT = 11
MIN_SCALE = 0.75  # the smallest the picture is drawn (text stays legible), then it scrolls
CHAR_WIDTH = 6.4  # a generous average advance of an 11 px sans-serif character
SHARED_FILL = "#1d63ed"
UNIQUE_FILL = "#c9d1dd"
PENDING_FILL = "#ffffff"
TEXT_FILL = "#0b1a33"


# -- reading the catalog ---------------------------------------------------------------------


class LayerPathKey(Func):
    """An image's layer chain as a sortable string: its layers' primary keys, zero-padded,
    bottom first. Sorting images by it is the trie order of their chains: images sharing a
    prefix of layers are adjacent, and a shorter chain comes before the chains it starts."""

    output_field = CharField()
    arity = 1

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # SQLite before 3.44 has no ORDER BY inside an aggregate: group_concat reads the rows
        # of an ordered subquery in that order
        table = connection.ops.quote_name(ImageLayer._meta.db_table)
        template = (
            "(SELECT group_concat(k, '') FROM (SELECT substr('000000000000' || il.layer_id, -12)"
            f" AS k FROM {table} il WHERE il.image_id = %(expressions)s ORDER BY il.position))"
        )
        return self.as_sql(compiler, connection, template=template, **extra)

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        table = connection.ops.quote_name(ImageLayer._meta.db_table)
        template = (
            "(SELECT string_agg(lpad(il.layer_id::text, 12, '0'), '' ORDER BY il.position) "
            f"FROM {table} il WHERE il.image_id = %(expressions)s)"
        )
        return self.as_sql(compiler, connection, template=template, **extra)


@dataclass(frozen=True)
class Family:
    """The images on one bottom layer, and where they start in the picture's row order."""

    layer_id: int
    chain_id: str
    unpacked_size: int | None
    images: int
    start: int  # the row (0-based, over the whole catalog) of its first image

    @property
    def saves(self) -> int:
        """The bytes sharing the bottom layer saves."""
        return (self.unpacked_size or 0) * max(self.images - 1, 0)

    @property
    def chain_hex(self) -> str:
        return self.chain_id.split(":", 1)[-1]


@dataclass(frozen=True)
class SharingTotals:
    """Unpacked layers, whole catalog: every image counted as if it were stored alone
    (``separate``), each ChainID once (``stored``), and what that saves."""

    separate: int
    stored: int
    pending_layers: int  # layers whose size is not known yet (counted as 0)

    @property
    def saves(self) -> int:
        return self.separate - self.stored

    @property
    def saves_percent(self) -> float:
        return 100.0 * self.saves / self.separate if self.separate else 0.0


def _users(rows: QuerySet[ImageLayer]) -> Subquery:
    """How many images (of the image-layer rows ``rows``) use the outer layer: a count over
    the layer index, one per layer."""
    return Subquery(
        rows.filter(layer=OuterRef("pk"))
        .order_by()
        .values("layer")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )


def catalog_families(rows: QuerySet[ImageLayer]) -> list[Family]:
    """Every family of the images whose layer rows are ``rows``, in the picture's order, in one
    query. A bottom layer is a layer with no parent (its ChainID is its DiffID); the images on
    it are counted through the layer index, not by scanning every image's bottom row."""
    users = _users(rows)
    bottoms = (
        Layer.objects.filter(parent__isnull=True)
        .annotate(n=users)
        .filter(n__gt=0)
        .order_by("pk")
        .values_list("pk", "chain_id", "unpacked_size", "n")
    )
    families = []
    start = 0
    for pk, chain, unpacked, n in bottoms:
        families.append(
            Family(layer_id=pk, chain_id=chain, unpacked_size=unpacked, images=n, start=start)
        )
        start += n
    return families


def sharing_totals(rows: QuerySet[ImageLayer]) -> SharingTotals:
    """The header's figures from the image-layer rows ``rows``, in one aggregate query: each
    layer's users counted first (over the layer index alone), then joined to the layer's size
    and summed (size x users is what pulling every image separately takes).

    Grouping before the join reads one narrow index instead of joining every image-layer row
    to its layer (half the time on both databases at 10,000 images), which the ORM cannot
    express, hence the SQL around the ORM's own (restricted) grouped query."""
    grouped, params = (
        rows.order_by().values("layer_id").annotate(users=Count("pk")).query.sql_with_params()
    )
    layer = connection.ops.quote_name(Layer._meta.db_table)
    sql = (
        "SELECT COALESCE(SUM(l.unpacked_size * s.users), 0), COALESCE(SUM(l.unpacked_size), 0),"
        " COALESCE(SUM(CASE WHEN l.unpacked_size IS NULL THEN 1 ELSE 0 END), 0)"
        f" FROM ({grouped}) s INNER JOIN {layer} l ON l.id = s.layer_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        separate, stored, pending = cursor.fetchone()
    return SharingTotals(separate=int(separate), stored=int(stored), pending_layers=int(pending))


@dataclass(frozen=True)
class Cell:
    """One layer of one image row."""

    layer_id: int
    chain_id: str
    unpacked_size: int | None
    size: int  # compressed

    @property
    def chain_hex(self) -> str:
        return self.chain_id.split(":", 1)[-1]


@dataclass
class Row:
    """One image of the picture: its label and its layers, bottom first."""

    image_id: int
    label: str
    image_short_id: str
    cells: list[Cell] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(cell.unpacked_size or 0 for cell in self.cells)


def image_label(image: Image) -> str:
    """``repository:tag`` (its first tag), ``repository:<none>``, or the image ID."""
    tags = list(image.tags.all())
    if tags:
        repository = tags[0].repository
        name = Reference(repository.registry, repository.name, None, None).familiar
        return f"{name}:{tags[0].name}"
    repositories = list(image.repositories.all())
    if repositories:
        repo = repositories[0]
        return f"{Reference(repo.registry, repo.name, None, None).familiar}:<none>"
    return image.image_id


def page_rows(
    images: QuerySet[Image],
    rows: QuerySet[ImageLayer],
    families: list[Family],
    first: int,
    count: int,
    repositories: QuerySet[Repository] | None = None,
) -> tuple[list[Row], dict[int, int]]:
    """Rows ``first`` .. ``first + count - 1`` of the picture (``images``, whose layer rows are
    ``rows``), with their layers, and how many images use each of those layers; in six queries.

    The order is computed from the image-layer rows alone (their bottom row, then the key of
    the chain), never reading the images' own rows, and only over the families given. Rows
    are named only from ``repositories`` (those the user may read; None: all)."""
    if not families:
        return [], {}
    offset = first - families[0].start
    ordered = list(
        rows.filter(position=0, layer_id__in=[family.layer_id for family in families])
        .annotate(path=LayerPathKey("image_id"))
        .order_by("path", "image_id")
        .values_list("image_id", flat=True)[offset : offset + count]
    )
    page = (
        images.filter(pk__in=ordered)
        .only("pk", "config_digest")
        .prefetch_related(
            Prefetch("tags", queryset=readable_tags(repositories)),
            Prefetch(
                "repositories",
                queryset=Repository.objects.all() if repositories is None else repositories,
            ),
        )
    )
    by_id = {
        image.pk: Row(image_id=image.pk, label=image_label(image), image_short_id=image.image_id)
        for image in page
    }
    stacks = (
        ImageLayer.objects.filter(image_id__in=list(by_id))
        .order_by("image_id", "position")
        .values_list("image_id", "layer_id")
    )
    layer_ids: dict[int, list[int]] = {}
    for image_id, layer_id in stacks:
        layer_ids.setdefault(image_id, []).append(layer_id)
    # each layer once, however many rows show it, with its users counted through the index
    layers: dict[int, Cell] = {}
    users: dict[int, int] = {}
    wanted = {pk for ids in layer_ids.values() for pk in ids}
    for pk, chain, unpacked, size, n in (
        Layer.objects.filter(pk__in=wanted)
        .annotate(users=_users(rows))
        .values_list("pk", "chain_id", "unpacked_size", "size", "users")
    ):
        layers[pk] = Cell(pk, chain, unpacked, size)
        users[pk] = n or 0
    out = []
    for image_id in ordered:
        row = by_id.get(image_id)
        if row is None:  # removed between the two reads
            continue
        row.cells = [layers[pk] for pk in layer_ids.get(image_id, []) if pk in layers]
        out.append(row)
    return out, users


# -- drawing ---------------------------------------------------------------------------------


def width_scale(rows: list[Row]) -> float:
    """Pixels per square-rooted byte, so that the longest of ``rows`` is PLOT_WIDTH wide."""
    scale = math.inf
    for row in rows:
        roots = sum(math.sqrt(cell.unpacked_size or 0) for cell in row.cells)
        if roots:
            scale = min(scale, (PLOT_WIDTH - MIN_BLOCK * len(row.cells)) / roots)
    return scale if math.isfinite(scale) and scale > 0 else 0.0


def block_width(size: int | None, scale: float) -> float:
    """A layer's width: MIN_BLOCK (so a layer of a few bytes, or of a size not known yet,
    stays visible) plus ``scale`` times the square root of its bytes."""
    return MIN_BLOCK + scale * math.sqrt(size or 0)


# an argument both routes accept (an int, and a ChainID's text), unlikely in any URL prefix
_PLACEHOLDER = "918273645546372819"


class _Links:
    """``reverse()`` for the hundreds of links of a picture at the cost of one ``reverse`` per
    route: each route is reversed once with a placeholder, then each argument put in."""

    def __init__(self) -> None:
        self._routes: dict[str, tuple[str, str]] = {}

    def __call__(self, name: str, argument: object) -> str:
        route = self._routes.get(name)
        if route is None:
            prefix, _, suffix = reverse(name, args=[_PLACEHOLDER]).partition(_PLACEHOLDER)
            route = self._routes[name] = (prefix, suffix)
        return f"{route[0]}{argument}{route[1]}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _attrs(**values: object) -> str:
    return "".join(
        f" {name.rstrip('_').replace('_', '-')}={quoteattr(str(v))}" for name, v in values.items()
    )


def _fit(lines: list[str], width: float) -> bool:
    return all(len(line) * CHAR_WIDTH <= width - 6 for line in lines)


def _block_text(lines_options: list[list[str]], x: float, y: float, w: float, h: float) -> str:
    """The first set of lines that fits the block, one line per row of height."""
    for lines in lines_options:
        if len(lines) * 14 <= h + 2 and _fit(lines, w):
            out = [
                f'<text x="{x + 4:.1f}" y="{y + 15 + 14 * i:.1f}">{escape(line)}</text>'
                for i, line in enumerate(lines)
            ]
            return "".join(out)
    return ""


def sharing_svg(rows: list[Row], users: dict[int, int], scale: float) -> SafeString:
    """The picture of ``rows`` (one family's rows on this page, in trie order) as SVG.

    A layer used by several consecutive rows is one block spanning them. ``users`` is how many
    images of the whole catalog use each layer (more than the rows here when the family goes
    on over other pages); ``scale`` the page's width scale (``width_scale``).
    """
    blocks: list[str] = []
    links = _Links()
    depth = max((len(row.cells) for row in rows), default=0)
    ends = [float(PLOT_LEFT)] * len(rows)
    for position in range(depth):
        index = 0
        while index < len(rows):
            cells = rows[index].cells
            if position >= len(cells):
                index += 1
                continue
            cell = cells[position]
            last = index
            while (
                last + 1 < len(rows)
                and position < len(rows[last + 1].cells)
                and rows[last + 1].cells[position].layer_id == cell.layer_id
            ):
                last += 1
            blocks.append(_block(cell, index, last, ends[index], users, scale, links))
            end = ends[index] + block_width(cell.unpacked_size, scale)
            for r in range(index, last + 1):
                ends[r] = end
            index = last + 1
    labels = []
    for index, row in enumerate(rows):
        y = index * ROW_PITCH
        # cut from the left: the repository's end and the tag tell images apart
        label = row.label if len(row.label) <= LABEL_CHARS else "…" + row.label[1 - LABEL_CHARS :]
        href = links("images:detail", row.image_id)
        tip = f"{row.label} · IMAGE ID {row.image_short_id} · SIZE {human_size(row.size)}"
        labels.append(
            f"<a{_attrs(href=href, class_='row-label', data_image=row.image_id)}>"
            f"<title>{escape(tip)}</title>"
            f'<text x="{LABEL_WIDTH - 4}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
            "</a>"
            f'<text class="row-size" x="{ends[index] + 6:.1f}" y="{y + 15}"'
            f' fill="#5b6473">{escape(human_size(row.size))}</text>'
        )
    # one width for every picture of a page (its longest row fills PLOT_WIDTH), so that each
    # is drawn at the same scale, text included, whatever its own rows' length
    width = PLOT_LEFT + PLOT_WIDTH + SIZE_COLUMN
    height = max(len(rows) * ROW_PITCH - (ROW_PITCH - ROW_HEIGHT), ROW_HEIGHT)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sharing-svg" viewBox="0 0 {width} '
        f'{height}" preserveAspectRatio="xMinYMin meet" role="img" font-size="{FONT}" '
        f'font-family="system-ui, sans-serif" fill="{TEXT_FILL}" data-rows="{len(rows)}" '
        # scales down with the column to MIN_SCALE, then the box scrolls sideways
        f'style="min-width: {int(width * MIN_SCALE)}px">'
        f"{''.join(labels)}{''.join(blocks)}</svg>"
    )
    # every text and attribute value above went through escape() or quoteattr()
    return mark_safe(svg)


def _block(
    cell: Cell,
    first: int,
    last: int,
    x: float,
    users: dict[int, int],
    scale: float,
    links: _Links,
) -> str:
    n = users.get(cell.layer_id, last - first + 1)
    y = first * ROW_PITCH
    w = block_width(cell.unpacked_size, scale)
    h = (last - first + 1) * ROW_PITCH - (ROW_PITCH - ROW_HEIGHT)
    href = links("layers:detail", cell.chain_hex)
    if cell.unpacked_size is None:
        size_text = f"not unpacked yet ({human_size(cell.size)} compressed)"
        saves = 0
        fill, opacity = PENDING_FILL, 1.0
        options = [["not unpacked"], ["…"]]
    else:
        size_text = human_size(cell.unpacked_size)
        saves = cell.unpacked_size * (n - 1)
        if n > 1:
            fill = SHARED_FILL
            opacity = min(0.22 + 0.1 * math.log2(n), 0.6)
            options = [
                [size_text, _plural(n, "image"), f"saves {human_size(saves)}"],
                [f"{size_text} · {_plural(n, 'image')} · saves {human_size(saves)}"],
                [f"{size_text} · \u00d7{n:,}"],
                [size_text],
            ]
        else:
            fill, opacity = UNIQUE_FILL, 1.0
            options = [[size_text]]
    shown = last - first + 1
    tip = (
        f"layer {cell.chain_hex[:12]} · {size_text} · used by {_plural(n, 'image')}"
        + (f" ({shown:,} on this page)" if shown != n else "")
        + (f" · sharing saves {human_size(saves)}" if n > 1 else " · not shared")
    )
    rect = (
        f'<rect x="{x:.1f}" y="{y}" width="{w - 1:.1f}" height="{h}" rx="3" fill="{fill}"'
        f' fill-opacity="{opacity:.2f}" stroke="#1d2330" stroke-opacity="0.25"'
        + (' stroke-dasharray="3 2"' if cell.unpacked_size is None else "")
        + "/>"
    )
    data = _attrs(
        href=href,
        class_="block shared" if n > 1 else "block",
        data_chain=cell.chain_hex,
        data_bytes=cell.unpacked_size if cell.unpacked_size is not None else "",
        data_users=n,
        data_saves=saves,
        data_first_row=first,
        data_last_row=last,
    )
    return f"<a{data}><title>{escape(tip)}</title>{rect}{_block_text(options, x, y, w, h)}</a>"


# -- the page --------------------------------------------------------------------------------


@dataclass
class Section:
    """One family's rows on this page, drawn."""

    family: Family
    first_row: int  # within the family, 0-based
    rows: list[Row]
    svg: SafeString
    name: str  # the family's first image, when it is on this page

    @property
    def last_row(self) -> int:
        """The family's row (1-based) of the last image drawn here."""
        return self.first_row + len(self.rows)

    @property
    def anchor(self) -> str:
        return f"base-{self.family.chain_hex[:12]}"


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.GET.get(name, default))
    except ValueError:
        value = default
    return max(low, min(value, high))


@require_safe
def sharing_page(request: HttpRequest) -> HttpResponse:
    """The whole catalog's sharing, drawn as one picture, a page of rows at a time."""
    images = restrict(Image.objects.all(), request.user)
    # the permission hook narrows the layer rows itself, so the aggregates below read one
    # table and its indexes rather than testing every row against the visible images
    layer_rows = restrict(ImageLayer.objects.all(), request.user)
    families = catalog_families(layer_rows)
    totals = sharing_totals(layer_rows)
    drawn = families[-1].start + families[-1].images if families else 0
    per_page = _int_param(request, "rows", ROWS_PER_PAGE, MIN_ROWS, MAX_ROWS)
    pages = max(math.ceil(drawn / per_page), 1)
    page = _int_param(request, "page", 1, 1, pages)
    first = (page - 1) * per_page
    last = min(first + per_page, drawn)  # exclusive
    touched = [f for f in families if f.start < last and f.start + f.images > first]
    rows, users = page_rows(
        images, layer_rows, touched, first, last - first, named_by(request.user)
    )
    largest = max((cell.unpacked_size or 0 for row in rows for cell in row.cells), default=0)
    scale = width_scale(rows)
    sections = []
    at = first
    for family in touched:
        take = min(family.start + family.images, last) - at
        family_rows, rows = rows[:take], rows[take:]
        within = at - family.start
        sections.append(
            Section(
                family=family,
                first_row=within,
                rows=family_rows,
                svg=sharing_svg(family_rows, users, scale),
                name=family_rows[0].label if within == 0 and family_rows else "",
            )
        )
        at += take
    indexed = [f for f in families if f.images > 1][:MAX_INDEXED_FAMILIES]
    context = {
        "totals": totals,
        "families": families,
        "index": [(f, f.start // per_page + 1) for f in indexed],
        "unindexed": len(families) - len(indexed),
        "sections": sections,
        "page": page,
        "pages": pages,
        "per_page": per_page,
        "first_row": first + 1,
        "last_row": last,
        "drawn": drawn,
        "largest": largest,
        "previous_page": page - 1 if page > 1 else None,
        "next_page": page + 1 if page < pages else None,
        "custom_rows": per_page != ROWS_PER_PAGE,
    }
    htmx = getattr(request, "htmx", None)
    fragment = (
        isinstance(htmx, HtmxDetails)
        and bool(htmx)
        and not htmx.boosted
        and not htmx.history_restore_request
    )
    template = "dashboard/sharing_body.html" if fragment else "dashboard/sharing.html"
    return render(request, template, context)
