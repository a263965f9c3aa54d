"""What a person does in the dashboard, in a real browser: the live server, a real Celery
worker, and the CNCF registry on loopback (tests/registry/conftest.py).

Each test waits on what the page shows (Playwright's expect), never on a fixed sleep; the
one timed window is the check that a finished job's page has stopped polling.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

import pytest
from django.urls import reverse
from playwright.sync_api import Page, Request, expect

from layerhub.images.models import Image
from layerhub.images.sizes import store_totals
from layerhub.jobs.models import Job
from tests.browser.conftest import JOB_TIMEOUT_MS, exact_bytes, screenshot, wait_until
from tests.registry.conftest import Seed
from tests.support.busybox import busybox_layer
from tests.support.oci import Image as OciImage
from tests.support.oci import LayerBlob, write_layout
from tests.support.peers import require_root
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry
from tests.support.teams import default_team

pytestmark = pytest.mark.usefixtures("worker")

# How long the registry front holds each blob before sending it: long enough that the job's
# page is up and polling (0.5 s, then every 2 s) while the pull is still downloading.
BLOB_DELAY = 3.0
# Records each swap of the job panel: its state and its progress bars at that moment.
RECORD_SWAPS = """() => {
  window.__pageLoads = (window.__pageLoads || 0) + 1;
  window.__swaps = [];
  document.body.addEventListener("htmx:afterSwap", () => {
    const panel = document.getElementById("job-panel");
    if (!panel) return;
    window.__swaps.push({
      state: panel.dataset.state,
      bars: [...panel.querySelectorAll("[role=progressbar]")].map(
        (bar) => Number(bar.getAttribute("aria-valuenow"))),
      polling: panel.hasAttribute("hx-trigger"),
    });
  });
}"""


def job_id_of(page: Page) -> int:
    match = re.search(r"/jobs/(\d+)/$", page.url)
    assert match, f"not a job's page: {page.url}"
    return int(match.group(1))


def pull_from_the_form(page: Page, reference: str) -> int:
    """Fill and send the pull form; the browser lands on the new job's page."""
    page.goto(reverse("jobs:pull"))
    page.get_by_label("Image reference").fill(reference)
    page.get_by_role("button", name="Pull", exact=True).click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    return job_id_of(page)


def wait_for_job_page_to_end(page: Page) -> None:
    """The job and every job it started (an unpack) have ended: the panel is final, with no
    polling trigger left."""
    expect(page.locator("#job-panel:not([hx-trigger])")).to_be_attached(timeout=JOB_TIMEOUT_MS)


def job_state(page: Page) -> str:
    return page.locator("#job-panel .job-status .badge").first.inner_text()


def figures(page: Page, *names: str) -> dict[str, int]:
    """Exact bytes of the page's ``data-figure`` sizes."""
    return {name: exact_bytes(page, f"[data-figure={name}]") for name in names}


def image_page_sizes(page: Page, pk: int) -> dict[str, int]:
    page.goto(reverse("images:detail", args=[pk]))
    sizes = figures(page, "size", "shared_size", "unique_size")
    assert sizes["size"] == sizes["shared_size"] + sizes["unique_size"]
    return sizes


def overview(page: Page) -> dict[str, int]:
    """The signed-in team owner's overview: their team's logical total and its shared part.
    The store-wide physical total and savings are staff's, so the page has none of them; the
    test reads those from the records the page would show them from."""
    page.goto(reverse("dashboard:home"))
    expect(page.locator("[data-figure=savings_bytes]")).to_have_count(0)
    expect(page.locator("[data-figure=physical_bytes]")).to_have_count(0)
    team = page.locator("[data-team=default]")
    totals = store_totals()
    return {
        "team_logical_bytes": exact_bytes(team, "[data-figure=team_logical_bytes]"),
        "team_shared_bytes": exact_bytes(team, "[data-figure=team_shared_bytes]"),
        "physical_bytes": totals.physical_bytes,
        "savings_bytes": totals.savings_bytes,
    }


def test_a_pull_from_the_form_shows_its_progress_live_until_done(
    signed_in: Page, proxy: FaultyProxy, seed: Seed
) -> None:
    page = signed_in
    proxy.delay = BLOB_DELAY
    pk = pull_from_the_form(page, f"{proxy.host}/team/app:v1")
    page.evaluate(RECORD_SWAPS)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    fragment_requests: list[str] = []
    job_url = page.url

    def polled(request: Request) -> None:
        if request.url == job_url and request.headers.get("hx-request") == "true":
            fragment_requests.append(request.url)

    page.on("request", polled)

    assert job_state(page) in {"queued", "running"}
    # while the registry holds the blobs back: bars on the page, not yet full
    expect(page.locator("#job-panel .layer:not(.done) [role=progressbar]").first).to_be_visible()
    screenshot(page, "job-running")
    expect(page.locator("#job-panel .job-status .badge").first).to_have_text(
        "succeeded", timeout=JOB_TIMEOUT_MS
    )
    wait_for_job_page_to_end(page)

    assert page.url == job_url
    assert navigations == [], "the page was never reloaded or left"
    assert page.evaluate("window.__pageLoads") == 1
    swaps = page.evaluate("window.__swaps")
    assert any(s["state"] == "running" and any(v < 100 for v in s["bars"]) for s in swaps), swaps
    assert swaps[-1]["state"] == "succeeded", swaps[-1]
    assert not swaps[-1]["polling"], swaps[-1]
    bars = page.locator("#job-panel [role=progressbar]")
    assert bars.count() == 2  # the pull's two layers, downloaded and unpacked in one pass
    for i in range(bars.count()):
        expect(bars.nth(i)).to_have_attribute("aria-valuenow", "100")
    job = Job.objects.get(pk=pk)
    assert job.state == Job.State.SUCCEEDED, job.error

    # polling has stopped: across more than one polling interval, no request for the panel
    seen = len(fragment_requests)
    assert seen >= 1, "the panel polled while the job ran"
    page.wait_for_timeout(2_500)
    assert len(fragment_requests) == seen, "the finished job's page still polls"


def pull_and_wait(page: Page, reference: str) -> Image:
    pk = pull_from_the_form(page, reference)
    wait_for_job_page_to_end(page)
    assert job_state(page) == "succeeded", page.locator("#job-panel").inner_text()
    image = Job.objects.get(pk=pk).image
    assert image is not None
    return image


def test_b_a_second_image_on_the_same_base_shares_it_and_the_store_saves(
    signed_in: Page, registry: Registry, seed: Seed
) -> None:
    page = signed_in
    app = pull_and_wait(page, f"{registry.host}/team/app:v1")
    alone = image_page_sizes(page, app.pk)
    assert alone["shared_size"] == 0
    assert alone["unique_size"] == alone["size"] > 0
    before = overview(page)
    assert before["savings_bytes"] == 0
    assert before["team_shared_bytes"] == 0

    other = pull_and_wait(page, f"{registry.host}/team/other:other")
    shared = image_page_sizes(page, app.pk)
    assert shared["size"] == alone["size"]
    # the bottom layer's ChainID is its diffID
    base_row = f"table.layers tr[data-layer='{seed.base.diff_id}']"
    base_unpacked = exact_bytes(page, f"{base_row} td:nth-child(5) [title]")
    expect(page.locator(f"{base_row} .sharers")).to_contain_text("team/other")
    assert shared["shared_size"] == base_unpacked > 0
    assert shared["unique_size"] == alone["size"] - base_unpacked
    screenshot(page, "image")
    other_sizes = image_page_sizes(page, other.pk)
    assert other_sizes["shared_size"] == base_unpacked

    after = overview(page)
    # the base is stored once: its snapshot and its compressed blob are what sharing saves
    assert after["savings_bytes"] == before["savings_bytes"] + base_unpacked + len(seed.base.data)
    # and in the team's figures, both images hold it: it is shared, for each of them
    assert after["team_shared_bytes"] == 2 * (base_unpacked + len(seed.base.data))
    assert after["team_logical_bytes"] > before["team_logical_bytes"]
    screenshot(page, "overview")
    page.goto(reverse("dashboard:sharing"))
    expect(page.locator("a.block.shared[data-users='2']")).to_have_count(1)
    screenshot(page, "sharing")


def test_d_deleting_an_image_frees_what_its_page_said(
    signed_in: Page, registry: Registry, seed: Seed
) -> None:
    page = signed_in
    pull_and_wait(page, f"{registry.host}/team/app:v1")
    other = pull_and_wait(page, f"{registry.host}/team/other:other")
    before = overview(page)

    page.goto(reverse("images:detail", args=[other.pk]))
    frees = exact_bytes(page, "[data-field=frees] [title]")
    # its own layer, config and manifest; never the base the other image still uses
    assert 0 < frees < before["physical_bytes"]
    page.get_by_role("button", name=re.compile("^Delete image")).click()
    expect(page.locator(".messages")).to_be_visible()

    after = overview(page)
    assert after["physical_bytes"] == before["physical_bytes"] - frees
    assert not Image.objects.filter(pk=other.pk).exists()


# -- a container: write, run, diff, commit --------------------------------------------------

BASE_REF = "localhost/base:1"


@pytest.fixture
def busybox_base(tmp_path: Path) -> Image:
    """The busybox base image (tests/support/busybox.py), imported by the worker."""
    from layerhub.images.services import image_import

    raw = busybox_layer()
    layer = LayerBlob(
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip.compress(raw, mtime=0),
        "sha256:" + hashlib.sha256(raw).hexdigest(),
    )
    layout = write_layout(tmp_path / "base-layout", {BASE_REF: OciImage([layer])})
    job = image_import(team=default_team(), path=str(layout))

    def imported() -> bool:
        job.refresh_from_db()
        return (
            job.done
            and all(child.done for child in job.children.all())
            and (job.state != Job.State.SUCCEEDED or job.children.exists())
        )

    wait_until(imported, 60, "the base image's import and unpack")
    assert job.state == Job.State.SUCCEEDED, job.error
    assert all(c.state == Job.State.SUCCEEDED for c in job.children.all())
    image = job.image
    assert image is not None
    return image


def test_c_a_container_changed_and_committed_sits_on_its_base_in_the_sharing_picture(
    signed_in: Page, busybox_base: Image
) -> None:
    require_root("runc runs the command in the container")
    page = signed_in
    page.goto(reverse("containers:create") + f"?image={busybox_base.pk}")
    page.locator("form.create-form input[name=name]").fill("web")
    page.get_by_role("button", name="Create container").click()
    expect(page.locator("h1")).to_have_text("web")

    write = page.locator("form[action$='/write/']")
    write.locator("input[name=path]").fill("/tmp/hello.txt")
    write.locator("textarea[name=content]").fill("hello from the browser\n")
    write.get_by_role("button", name="Write file").click()
    expect(page.locator(".messages")).to_contain_text("Wrote /tmp/hello.txt")
    page.goto(reverse("containers:detail", args=["web"]))

    run = page.locator("form[action$='/exec/']")
    run.locator("input[name=command]").fill("sh -c 'cat /tmp/hello.txt; echo ran > /root/ran'")
    run.get_by_role("button", name="Run").click()
    result = page.locator("#exec-result [data-exec=result]")
    expect(result.locator("[data-figure=exit_code]")).to_have_text("0")
    expect(result.locator("[data-stream=stdout]")).to_have_text("hello from the browser\n")

    page.reload()
    diff = page.locator("#diff ul.diff")
    expect(diff.locator("li.mark-A", has_text="/tmp/hello.txt")).to_be_visible()
    expect(diff.locator("li.mark-A", has_text="/root/ran")).to_be_visible()
    expect(diff.locator("li.mark-C", has_text="/root")).to_be_visible()

    commit = page.locator("form[action$='/commit/']")
    commit.locator("input[name=repository]").fill("team/web:1")
    commit.locator("input[name=message]").fill("hello file")
    commit.get_by_role("button", name="Commit").click()
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"))
    wait_for_job_page_to_end(page)
    assert job_state(page) == "succeeded", page.locator("#job-panel").inner_text()
    committed = Job.objects.get(pk=job_id_of(page)).image
    assert committed is not None

    page.goto(reverse("dashboard:sharing"))
    label = page.locator(f"a.row-label[data-image='{committed.pk}']")
    expect(label).to_contain_text("team/web:1")
    picture = page.locator("svg.sharing-svg", has=label)
    rows = picture.locator("a.row-label")
    row = [rows.nth(i).get_attribute("data-image") for i in range(rows.count())].index(
        str(committed.pk)
    )
    base_hex = busybox_base.image_layers.get(position=0).layer.chain_id.split(":")[1]
    base = picture.locator(f"a.block[data-chain='{base_hex}']")
    expect(base).to_have_attribute("data-users", "2")
    first, last = (
        int(base.get_attribute("data-first-row") or -1),
        int(base.get_attribute("data-last-row") or -1),
    )
    assert first <= row <= last, "the base's block spans the committed image's row"
    own = picture.locator("a.block:not(.shared)")
    expect(own).to_have_count(1)
    assert own.get_attribute("data-first-row") == str(row)
