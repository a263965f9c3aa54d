"""The layer-sharing picture: one block per layer across the rows of the images using it."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from layerhub.core.humanize import human_size
from layerhub.engine.digest import chain_ids
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.models import Image, Layer, Repository, Tag
from layerhub.images.sizes import store_totals
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
MB = 1_000_000
URL = reverse("dashboard:sharing")


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Catalog:
    """Images built layer by layer, the ChainIDs computed as the engine computes them."""

    def __init__(self) -> None:
        self.layers: dict[str, Layer] = {}
        self.repository = Repository.objects.create(
            team=default_team(), registry="docker.io", name="team/app"
        )

    def image(self, tag: str, stack: list[tuple[str, int | None]]) -> Image:
        """An image whose layers are ``stack`` (name, unpacked size or None) bottom first;
        a name used again over the same layers below is the same layer."""
        chains = chain_ids([digest(f"diff {name}") for name, _ in stack])
        image = Image.objects.create(
            manifest_digest=digest(f"manifest {tag}"),
            media_type="application/vnd.oci.image.manifest.v1+json",
            config_digest=digest(f"config {tag}"),
            config={},
        )
        parent = None
        layers = []
        for (name, size), chain in zip(stack, chains, strict=True):
            layer = self.layers.get(chain)
            if layer is None:
                layer = Layer.objects.create(
                    chain_id=chain,
                    parent=parent,
                    digest=digest(f"blob {name}"),
                    diff_id=digest(f"diff {name}"),
                    media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                    size=(size or 1000) // 3,
                    unpacked_size=size,
                    unpacked_at=None if size is None else timezone.now(),
                )
                self.layers[chain] = layer
            layers.append(layer)
            parent = layer
        image_layers_add(image=image, layers=layers)
        Tag.objects.create(repository=self.repository, name=tag, image=image)
        image.repositories.add(self.repository)
        return image

    def layer(self, *names: str) -> Layer:
        """The layer reached by the stack ``names``."""
        return self.layers[chain_ids([digest(f"diff {n}") for n in names])[-1]]


@pytest.fixture
def catalog() -> Catalog:
    """Base B carries three images (two of them also share x); base D carries one."""
    c = Catalog()
    c.image("a1", [("B", 100 * MB), ("x", 20 * MB)])
    c.image("a2", [("B", 100 * MB), ("x", 20 * MB), ("y", 3 * MB)])
    c.image("a3", [("B", 100 * MB), ("z", 7 * MB)])
    c.image("c", [("D", 50 * MB), ("w", 1_000)])
    return c


def svgs(html: str) -> list[ET.Element]:
    """Every SVG picture in the page, parsed as XML (a malformed one fails the test)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, re.S)]


def blocks(svg: ET.Element) -> dict[str, ET.Element]:
    found: dict[str, ET.Element] = {}
    for a in svg.iter(f"{SVG}a"):
        if "data-chain" in a.attrib:
            assert a.attrib["data-chain"] not in found, "a layer drawn twice in one family"
            found[a.attrib["data-chain"]] = a
    return found


def row_labels(svg: ET.Element) -> list[tuple[str, str]]:
    """(label text, href) of each row, top to bottom."""
    out = []
    for a in svg.iter(f"{SVG}a"):
        if a.attrib.get("class") == "row-label":
            text = a.find(f"{SVG}text")
            assert text is not None
            out.append((text.text or "", a.attrib["href"]))
    return out


def hex_of(layer: Layer) -> str:
    return layer.chain_id.split(":", 1)[1]


def figure(html: str, name: str) -> tuple[str, int]:
    match = re.search(rf'data-figure="{name}" title="(\d+) bytes">([^<]*)<', html)
    assert match, f"no {name} figure"
    return match.group(2), int(match.group(1))


def test_a_shared_base_is_one_block_across_the_rows_of_its_images(
    admin_client: Client, catalog: Catalog
) -> None:
    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    first, second = svgs(html)  # one picture per family, the older base first

    labels = [label for label, _ in row_labels(first)]
    # trie order: a1's chain is a prefix of a2's, so a2 follows it; a3 branches off at B
    assert labels == ["team/app:a1", "team/app:a2", "team/app:a3"]
    drawn = blocks(first)
    assert set(drawn) == {
        hex_of(catalog.layer(*names)) for names in (["B"], ["B", "x"], ["B", "x", "y"], ["B", "z"])
    }

    base = drawn[hex_of(catalog.layer("B"))]
    assert (base.attrib["data-first-row"], base.attrib["data-last-row"]) == ("0", "2")
    assert base.attrib["data-users"] == "3"
    assert base.attrib["data-bytes"] == str(100 * MB)
    assert base.attrib["data-saves"] == str(200 * MB)
    assert base.attrib["href"] == reverse("layers:detail", args=[hex_of(catalog.layer("B"))])
    title = base.find(f"{SVG}title")
    assert title is not None
    assert title.text is not None
    assert "100MB" in title.text
    assert "used by 3 images" in title.text
    assert "200MB" in title.text
    rect = base.find(f"{SVG}rect")
    assert rect is not None
    row = float(first.attrib["viewBox"].split()[3]) / 3  # three rows fill the picture
    assert float(rect.attrib["height"]) == pytest.approx(3 * row, abs=3)
    # its label, drawn inside the block
    texts = [t.text for t in base.iter(f"{SVG}text")]
    assert texts == ["100MB", "3 images", "saves 200MB"]

    shared = drawn[hex_of(catalog.layer("B", "x"))]
    assert (shared.attrib["data-first-row"], shared.attrib["data-last-row"]) == ("0", "1")
    assert (shared.attrib["data-users"], shared.attrib["data-saves"]) == ("2", str(20 * MB))
    # x starts where B ends, on both its rows
    x_rect = shared.find(f"{SVG}rect")
    assert x_rect is not None
    assert float(x_rect.attrib["x"]) == pytest.approx(
        float(rect.attrib["x"]) + float(rect.attrib["width"]) + 1, abs=0.2
    )
    # and so does z, on the third row (every row of a block starts where the block below ends)
    z_rect = drawn[hex_of(catalog.layer("B", "z"))].find(f"{SVG}rect")
    assert z_rect is not None
    assert z_rect.attrib["x"] == x_rect.attrib["x"]
    for only in (["B", "x", "y"], ["B", "z"]):
        one = drawn[hex_of(catalog.layer(*only))]
        assert one.attrib["data-first-row"] == one.attrib["data-last-row"]
        assert (one.attrib["data-users"], one.attrib["data-saves"]) == ("1", "0")
        assert "shared" not in one.attrib["class"]

    assert [label for label, _ in row_labels(second)] == ["team/app:c"]
    assert blocks(second)[hex_of(catalog.layer("D"))].attrib["data-users"] == "1"


def test_the_header_figures_are_the_catalogs_aggregates(
    admin_client: Client, catalog: Catalog
) -> None:
    html = admin_client.get(URL).content.decode()
    separate = (3 * 100 + 2 * 20 + 3 + 7 + 50) * MB + 1_000
    stored = (100 + 20 + 3 + 7 + 50) * MB + 1_000
    assert figure(html, "separate") == (human_size(separate), separate)
    assert figure(html, "stored") == (human_size(stored), stored)
    assert figure(html, "saves") == (human_size(separate - stored), separate - stored)
    # the same as the sizes module's record of what the store holds unpacked
    assert store_totals().physical_snapshot_bytes == stored
    # and the sum of what the blocks say they save
    saves = sum(int(b.attrib["data-saves"]) for svg in svgs(html) for b in blocks(svg).values())
    assert saves == separate - stored


def test_rows_link_to_their_image_and_blocks_to_their_layer(
    admin_client: Client, catalog: Catalog
) -> None:
    html = admin_client.get(URL).content.decode()
    images = {image.tags.get().name: image for image in Image.objects.all()}
    for svg in svgs(html):
        for label, href in row_labels(svg):
            assert href == reverse("images:detail", args=[images[label.split(":")[-1]].pk])
        for chain, block in blocks(svg).items():
            assert block.attrib["href"] == reverse("layers:detail", args=[chain])
            assert block.find(f"{SVG}title") is not None


def test_the_picture_scales_and_scrolls_on_a_phone(admin_client: Client, catalog: Catalog) -> None:
    html = admin_client.get(URL).content.decode()
    svg = svgs(html)[0]
    # no fixed size: the viewBox scales it to its box, down to a legible minimum...
    assert "width" not in svg.attrib
    assert "height" not in svg.attrib
    width = float(svg.attrib["viewBox"].split()[2])
    minimum = int(re.fullmatch(r"min-width: (\d+)px", svg.attrib["style"]).group(1))  # type: ignore[union-attr]
    assert 0.5 * width <= minimum < width
    # ...below which its box scrolls sideways, not the page
    assert re.search(r'<div class="sharing-scroll"><svg\b', html)
    css = (Path(settings.BASE_DIR) / "static/css/sharing.css").read_text()
    assert re.search(r"\.sharing-scroll \{[^}]*overflow-x: auto", css)
    assert re.search(r"\.sharing-svg \{[^}]*width: 100%[^}]*height: auto", css)
    assert "css/sharing.css" in html


def test_a_layer_not_unpacked_yet_is_drawn_and_counted_apart(admin_client: Client) -> None:
    c = Catalog()
    c.image("one", [("B", 10 * MB), ("p", None)])
    c.image("two", [("B", 10 * MB)])
    html = admin_client.get(URL).content.decode()
    pending = blocks(svgs(html)[0])[hex_of(c.layer("B", "p"))]
    assert pending.attrib["data-bytes"] == ""
    rect = pending.find(f"{SVG}rect")
    assert rect is not None
    assert "stroke-dasharray" in rect.attrib
    assert "1 layer not unpacked yet counts as 0" in html
    assert figure(html, "stored")[1] == 10 * MB


def test_the_empty_catalog_says_what_to_do(admin_client: Client) -> None:
    response = admin_client.get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "No images yet" in html
    assert "seed_demo" in html
    assert "<svg" not in html


def test_anonymous_users_are_sent_to_sign_in(client: Client) -> None:
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_htmx_gets_the_fragment_and_a_boosted_request_the_page(
    admin_client: Client, catalog: Catalog
) -> None:
    fragment = admin_client.get(URL, headers={"HX-Request": "true"}).content.decode()
    assert "<html" not in fragment
    assert "<svg" in fragment
    assert 'data-figure="saves"' in fragment
    page = admin_client.get(URL, headers={"HX-Request": "true", "HX-Boosted": "true"})
    assert b"<html" in page.content


def test_pages_of_rows_keep_a_shared_block_counting_every_user(admin_client: Client) -> None:
    call_command("seed_demo", images=60, seed=3)
    total = Image.objects.count()

    first = admin_client.get(URL, {"rows": 20}).content.decode()
    assert f"Images 1\u201320 of {total} · page 1 of 3" in first
    second = admin_client.get(URL, {"rows": 20, "page": 2}).content.decode()
    assert f"Images 21\u201340 of {total} · page 2 of 3" in second
    rows = [r for svg in svgs(second) for r in row_labels(svg)]
    assert len(rows) == 20
    first_rows = {href for svg in svgs(first) for _, href in row_labels(svg)}
    assert first_rows.isdisjoint(href for _, href in rows)

    # a bottom layer used by more images than this page shows still counts all of them
    users = {
        layer.chain_id.split(":")[1]: layer.image_layers.count()
        for layer in Layer.objects.filter(parent__isnull=True)
    }
    for svg in svgs(second):
        for chain, block in blocks(svg).items():
            if chain in users:
                assert block.attrib["data-users"] == str(users[chain])
                spans = int(block.attrib["data-last-row"]) - int(block.attrib["data-first-row"])
                title = block.find(f"{SVG}title")
                assert title is not None
                assert title.text is not None
                if spans + 1 < users[chain]:
                    assert f"({spans + 1} on this page)" in title.text

    # out-of-range and malformed parameters are clamped, not errors
    last = admin_client.get(URL, {"rows": 20, "page": 999})
    assert last.status_code == 200
    assert "page 3 of 3" in last.content.decode()
    assert "page 1 of " in admin_client.get(URL, {"page": "x", "rows": "y"}).content.decode()


def test_every_image_is_drawn_once_over_the_pages(admin_client: Client) -> None:
    call_command("seed_demo", images=45, seed=5)
    seen: list[str] = []
    for page in (1, 2, 3, 4, 5):
        html = admin_client.get(URL, {"rows": 10, "page": page}).content.decode()
        seen += [href for svg in svgs(html) for _, href in row_labels(svg)]
    assert sorted(seen) == sorted(
        reverse("images:detail", args=[pk]) for pk in Image.objects.values_list("pk", flat=True)
    )
