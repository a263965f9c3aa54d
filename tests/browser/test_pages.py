"""Every page the navigation leads to, in a real browser at a desktop's and a phone's width:
it loads, raises no JavaScript error (the autouse fixture), and the page itself never scrolls
sideways (wide tables scroll inside their own box)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.urls import reverse
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot

# the signed-in user owns a team, so the audit log is offered too
NAV = [
    "dashboard:home",
    "images:list",
    "images:search",
    "dashboard:sharing",
    "containers:list",
    "jobs:list",
    "teams:list",
    "tokens:list",
    "audit:list",
]
WIDTHS = {"desktop": 1280, "phone": 375}


@pytest.fixture
def catalog(transactional_db: None) -> None:
    """A small catalog (metadata only), so tables and the sharing picture have rows to lay out."""
    call_command("seed_demo", images=12, stdout=open("/dev/null", "w"))  # noqa: SIM115


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("filled", [False, True], ids=["empty", "catalog"])
def test_every_nav_page_loads_at_desktop_and_phone_width(
    signed_in: Page, width: int, filled: bool, request: pytest.FixtureRequest
) -> None:
    page = signed_in
    if filled:
        request.getfixturevalue("catalog")
    page.set_viewport_size({"width": width, "height": 800})
    links = page.get_by_role("navigation", name="Main").get_by_role("link")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert hrefs == [reverse(name) for name in NAV]
    for name in NAV:
        response = page.goto(reverse(name))
        assert response is not None
        assert response.status == 200, name
        expect(page.locator("h1").first).to_be_visible()
        overflow = page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} at {width} px scrolls sideways by {overflow} px"
    if filled and width == WIDTHS["desktop"]:
        page.goto(reverse("dashboard:home"))
        screenshot(page, "overview-demo")


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.usefixtures("catalog")
def test_search_results_are_read_whole_at_desktop_and_phone_width(
    signed_in: Page, width: int
) -> None:
    """No column of the results is cut off at the side: on a phone each result is a block
    of labelled lines."""
    page = signed_in
    page.set_viewport_size({"width": width, "height": 800})
    page.goto(reverse("images:search") + "?by=path&q=*bin*")
    rows = page.locator("table.files tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() >= 2
    box = page.locator(".table-scroll")
    assert box.evaluate("b => b.scrollWidth - b.clientWidth") <= 0, "the results scroll sideways"
    for label in ("IMAGE", "PATH", "TYPE", "MODE", "LAYER"):
        cell = rows.first.locator(f'td[data-label="{label}"]')
        expect(cell).to_be_visible()
        found = cell.bounding_box()
        assert found is not None
        assert found["x"] >= 0
        assert found["x"] + found["width"] <= width, f"{label} runs past the {width} px page"
    label_in_front = rows.first.locator('td[data-label="PATH"]').evaluate(
        "td => getComputedStyle(td, '::before').content"
    )
    assert label_in_front == ('"PATH"' if width == WIDTHS["phone"] else "none")
    screenshot(page, f"search-{width}")


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("name", ["images:search", "images:packages"])
def test_search_forms_keep_every_field_usable(signed_in: Page, width: int, name: str) -> None:
    """Each text field of a search form is wide enough to type in, inside the page."""
    page = signed_in
    page.set_viewport_size({"width": width, "height": 800})
    page.goto(reverse(name))
    fields = page.locator('form.searchbar input[type="search"], form.searchbar input[type="text"]')
    assert fields.count() >= 1
    for i in range(fields.count()):
        box = fields.nth(i).bounding_box()
        assert box is not None
        assert box["width"] >= 120, f"field {i} of {name} is {box['width']:.0f} px at {width}"
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= width
