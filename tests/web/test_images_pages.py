"""The images list, an image's page and its actions, the first-run admin, the error pages."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path, reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.core.store import get_store
from layerhub.engine.errors import Conflict
from layerhub.images import sizes
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.listing import _bytes_in_layers
from layerhub.images.models import Image, Layer, Repository, Tag
from layerhub.images.services import image_pull
from layerhub.images.services.retry import image_unpack_retry
from layerhub.images.sizes import DeletePlan
from layerhub.jobs.models import Job
from tests.registry.conftest import eager, registry, seed  # noqa: F401 (fixtures)
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
BASE_TIME = datetime(2025, 1, 1, tzinfo=timezone.get_current_timezone())


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def layer(
    name: str, *, unpacked: int | None = 1000, size: int = 400, parent: Layer | None = None
) -> Layer:
    """A layer row; ``unpacked=None`` is one whose snapshot is not made yet."""
    return Layer.objects.create(
        chain_id=digest(f"chain {name}"),
        parent=parent,
        digest=digest(f"blob {name}"),
        diff_id=digest(f"diff {name}"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=size,
        unpacked_size=unpacked,
        file_count=3 if unpacked is not None else None,
        unpacked_at=timezone.now() if unpacked is not None else None,
    )


def image(
    name: str,
    layers: list[Layer],
    *,
    refs: tuple[str, ...] = (),
    repository: str | None = None,
    created: datetime | None = None,
    history: list[dict[str, Any]] | None = None,
) -> Image:
    """An image row over ``layers``; ``refs`` are ``team/app:tag`` names on 127.0.0.1:5000,
    ``repository`` a repository it came from without a tag."""
    img = Image.objects.create(
        manifest_digest=digest(f"manifest {name}"),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=digest(f"config {name}"),
        created=created or BASE_TIME,
        config={"history": history or []},
    )
    image_layers_add(image=img, layers=layers)
    for ref in refs:
        repo_name, _, tag = ref.partition(":")
        repo, _ = Repository.objects.get_or_create(
            team=default_team(), registry="127.0.0.1:5000", name=repo_name
        )
        img.repositories.add(repo)
        Tag.objects.create(repository=repo, name=tag, image=img)
    if repository:
        repo, _ = Repository.objects.get_or_create(
            team=default_team(), registry="127.0.0.1:5000", name=repository
        )
        img.repositories.add(repo)
    return img


@pytest.fixture
def catalog() -> dict[str, Any]:
    """base (10,000 B unpacked) under app:1 and app:2 (plus app:latest on app:2), an
    untagged image on the same base, and a lone image with a layer still to unpack."""
    base = layer("base", unpacked=10_000, size=4_000)
    a = layer("a", unpacked=2_000, size=800, parent=base)
    b = layer("b", unpacked=3_000, size=900, parent=base)
    c = layer("c", unpacked=500, size=300, parent=base)
    lone = layer("lone", unpacked=7_000, size=2_500)
    pending = layer("pending", unpacked=None, size=600, parent=lone)
    app1 = image(
        "app1",
        [base, a],
        refs=("team/app:1",),
        created=BASE_TIME,
        history=[
            {
                "created": "2024-12-01T00:00:00Z",
                "created_by": "/bin/sh -c #(nop) ADD file:base in /",
            },
            {
                "created": "2024-13-45T00:00:01Z",  # malformed: shown as written
                "created_by": "ENV PATH=/usr/bin",
                "empty_layer": True,
            },
            {
                "created": "2024-12-02T00:00:00Z",
                "created_by": "RUN make app",
                "author": "Ada <ada@example.com>",
                "comment": "buildkit.dockerfile.v0",
            },
        ],
    )
    app2 = image(
        "app2",
        [base, b],
        refs=("team/app:2", "team/app:latest"),
        created=BASE_TIME + timedelta(days=1),
    )
    untagged = image(
        "untagged", [base, c], repository="team/old", created=BASE_TIME - timedelta(days=3)
    )
    half = image(
        "half", [lone, pending], refs=("team/tools:1",), created=BASE_TIME + timedelta(days=2)
    )
    return {"app1": app1, "app2": app2, "untagged": untagged, "half": half, "base": base}


def rows_of(html: str) -> list[tuple[str, str]]:
    """(REPOSITORY, TAG) of each table row, in order."""
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    cells = re.findall(r'<td class="ref">(?:<a [^>]*>)?([^<]*)(?:</a>)?</td>', body)
    return [
        (
            cells[i].replace("&lt;", "<").replace("&gt;", ">"),
            cells[i + 1].replace("&lt;", "<").replace("&gt;", ">"),
        )
        for i in range(0, len(cells), 2)
    ]


# -- images list -------------------------------------------------------------------------------


def test_list_needs_a_login(client: Client) -> None:
    response = client.get(reverse("images:list"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_list_empty_says_what_to_do(admin_client: Client) -> None:
    response = admin_client.get(reverse("images:list"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "No images yet" in html
    assert reverse("jobs:pull") in html


def test_list_has_a_row_per_tag_and_untagged_as_none(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    response = admin_client.get(reverse("images:list"))
    assert response.status_code == 200
    html = response.content.decode()
    rows = rows_of(html)
    # newest first: half, app2 (two tags, in tag order), app1, the untagged one last
    assert rows == [
        ("127.0.0.1:5000/team/tools", "1"),
        ("127.0.0.1:5000/team/app", "2"),
        ("127.0.0.1:5000/team/app", "latest"),
        ("127.0.0.1:5000/team/app", "1"),
        ("127.0.0.1:5000/team/old", "<none>"),
    ]
    for column in (
        "REPOSITORY",
        "TAG",
        "IMAGE ID",
        "CREATED",
        "SIZE",
        "SHARED SIZE",
        "UNIQUE SIZE",
        "COMPRESSED",
        "LAYERS",
    ):
        assert column in html
    assert catalog["app1"].image_id in html
    # app1: SIZE 12,000 = SHARED 10,000 (the base, under three images) + UNIQUE 2,000
    app1_row = html.split(f'data-image="{catalog["app1"].pk}"', 1)[1].split("</tr>", 1)[0]
    assert 'title="12000 bytes"' in app1_row
    assert 'title="10000 bytes"' in app1_row
    assert 'title="2000 bytes"' in app1_row
    assert 'title="4800 bytes"' in app1_row  # compressed: 4,000 + 800


def test_list_shows_what_is_not_unpacked(admin_client: Client, catalog: dict[str, Any]) -> None:
    Job.objects.create(
        kind=Job.Kind.UNPACK, image=catalog["half"], state=Job.State.FAILED, error="disk full"
    )
    html = admin_client.get(reverse("images:list")).content.decode()
    row = html.split(f'data-image="{catalog["half"].pk}"', 1)[1].split("</tr>", 1)[0]
    assert "unpack failed" in row
    assert "7kB+" in row  # the unpacked part is known, the rest is not
    assert "1 of 2 layers not unpacked" in row


def test_list_search_matches_any_part_of_the_reference(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    url = reverse("images:list")
    assert rows_of(admin_client.get(url, {"q": "team/app:l"}).content.decode()) == [
        ("127.0.0.1:5000/team/app", "latest")
    ]
    assert list(rows_of(admin_client.get(url, {"q": "old"}).content.decode())) == [
        ("127.0.0.1:5000/team/old", "<none>")
    ]
    by_id = rows_of(admin_client.get(url, {"q": catalog["app1"].image_id[:8]}).content.decode())
    assert by_id == [("127.0.0.1:5000/team/app", "1")]
    nothing = admin_client.get(url, {"q": "no-such"}).content.decode()
    assert "No image matches" in nothing


def test_list_sorts_by_size_columns_with_a_stable_tie_break(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    url = reverse("images:list")
    unique_desc = rows_of(admin_client.get(url, {"sort": "-unique"}).content.decode())
    # unique: half 7,000, app2 3,000 (two rows), app1 2,000, untagged 500
    assert [tag for _, tag in unique_desc] == ["1", "2", "latest", "1", "<none>"]
    assert unique_desc[0][0].endswith("team/tools")
    size_asc = rows_of(admin_client.get(url, {"sort": "size"}).content.decode())
    assert size_asc[0] == ("127.0.0.1:5000/team/tools", "1")  # 7,000 unpacked so far
    assert size_asc[-1][1] in ("2", "latest")  # app2: 13,000
    shared_asc = rows_of(admin_client.get(url, {"sort": "shared"}).content.decode())
    assert shared_asc[0] == ("127.0.0.1:5000/team/tools", "1")  # its layers are its own
    html = admin_client.get(url, {"sort": "-size"}).content.decode()
    assert 'aria-sort="descending"' in html
    assert "sort=size" in html  # the header flips the order
    # a sort that names no column falls back to newest first
    assert rows_of(admin_client.get(url, {"sort": "nonsense"}).content.decode())[0][0].endswith(
        "team/tools"
    )


def test_list_paginates_with_a_clamped_page_size(admin_client: Client) -> None:
    base = layer("base")
    for n in range(7):
        image(f"img{n}", [base], refs=(f"team/many:{n}",), created=BASE_TIME + timedelta(hours=n))
    url = reverse("images:list")
    first = admin_client.get(url, {"per_page": 3}).content.decode()
    assert len(rows_of(first)) == 3
    assert "Page 1 of 3" in first
    assert "per_page=3" in first
    assert "page=2" in first
    last = admin_client.get(url, {"per_page": 3, "page": 3}).content.decode()
    assert rows_of(last) == [("127.0.0.1:5000/team/many", "0")]
    beyond = admin_client.get(url, {"per_page": 3, "page": 99}).content.decode()
    assert rows_of(beyond) == rows_of(last)  # clamped to the last page
    clamped = admin_client.get(url, {"per_page": 100_000}).content.decode()
    assert len(rows_of(clamped)) == 7
    zero = admin_client.get(url, {"per_page": "0", "page": "x"})
    assert zero.status_code == 200
    assert len(rows_of(zero.content.decode())) == 1


def test_list_answers_htmx_with_the_table_alone(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    url = reverse("images:list")
    fragment = admin_client.get(url, {"q": "app"}, HTTP_HX_REQUEST="true").content.decode()
    assert fragment.lstrip().startswith('<div id="image-table"')
    assert "<html" not in fragment
    assert len(rows_of(fragment)) == 3
    page = admin_client.get(url, {"q": "app"}).content.decode()
    assert "<html" in page
    assert 'id="image-table"' in page
    assert 'hx-trigger="keyup changed delay:500ms, search"' in page
    assert 'hx-include="#image-table-state"' in page
    # the sort the swapped table shows travels with the next search
    sorted_fragment = admin_client.get(url, {"sort": "-size"}, HTTP_HX_REQUEST="true").content
    assert b'<input type="hidden" name="sort" value="-size" form="image-search">' in sorted_fragment
    boosted = admin_client.get(url, HTTP_HX_REQUEST="true", HTTP_HX_BOOSTED="true").content.decode()
    assert "<html" in boosted
    restore = admin_client.get(
        url, HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    ).content.decode()
    assert "<html" in restore


# -- an image's page ---------------------------------------------------------------------------


@pytest.fixture
def delete_plan(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Stand in for sizes.image_delete_plan with a plan freeing ``n`` bytes."""

    def set_frees(n: int) -> None:
        plan = DeletePlan(blobs=[(digest("x"), n)])
        monkeypatch.setattr(sizes, "image_delete_plan", lambda image: plan, raising=False)

    set_frees(1234)
    return set_frees


def test_detail_page(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    app1 = catalog["app1"]
    response = admin_client.get(reverse("images:detail", args=[app1.pk]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "127.0.0.1:5000/team/app:1" in html
    assert app1.image_id in html
    assert "linux/amd64" in html
    assert 'data-figure="size">12kB' in html
    assert 'data-figure="shared_size">10kB' in html
    assert 'data-figure="unique_size">2kB' in html
    assert 'data-figure="download_size">4.8kB' in html
    assert "width: 83.333%" in html  # the bar: 10,000 of 12,000 shared
    # history, newest first, empty layers too
    assert (
        html.index("RUN make app") < html.index("ENV PATH=/usr/bin") < html.index("ADD file:base")
    )
    assert "buildkit.dockerfile.v0" in html
    assert "Ada &lt;ada@example.com&gt;" in html
    assert 'class="empty-layer"' in html
    assert "2024-13-45T00:00:01Z" in html
    # layers: ChainID links, and the other images on the base, linked
    base_hex = catalog["base"].chain_id.removeprefix("sha256:")
    assert reverse("layers:detail", args=[base_hex]) in html
    assert reverse("images:detail", args=[catalog["app2"].pk]) in html
    assert "127.0.0.1:5000/team/app:2" in html
    assert reverse("images:detail", args=[catalog["untagged"].pk]) in html
    assert "only this image" in html  # layer a
    assert reverse("layers:image_files", args=[app1.pk]) in html
    assert "Deleting frees" in html
    assert "(1234 bytes)" in html


def test_detail_lists_a_few_sharers_and_counts_the_rest(
    admin_client: Client, delete_plan: Callable[[int], None]
) -> None:
    base = layer("base")
    images = [image(f"i{n}", [base], refs=(f"team/x:{n}",)) for n in range(9)]
    html = admin_client.get(reverse("images:detail", args=[images[0].pk])).content.decode()
    sharers = re.findall(r'<td class="sharers">(.*?)</td>', html, re.S)[0]
    assert sharers.count("<a ") == 5
    assert "and 3 more" in sharers


def test_detail_of_an_unknown_image_is_404(admin_client: Client) -> None:
    response = admin_client.get(reverse("images:detail", args=[999]))
    assert response.status_code == 404
    assert b"Not found" in response.content


def test_detail_shows_a_failed_unpack_and_retries_it(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    half = catalog["half"]
    Job.objects.create(
        kind=Job.Kind.UNPACK, image=half, state=Job.State.FAILED, error="no space left on device"
    )
    html = admin_client.get(reverse("images:detail", args=[half.pk])).content.decode()
    assert "The unpack failed" in html
    assert "no space left on device" in html
    assert 'data-figure="size">7kB+' in html
    assert reverse("images:retry_unpack", args=[half.pk]) in html

    response = admin_client.post(reverse("images:retry_unpack", args=[half.pk]))

    job = Job.objects.filter(kind=Job.Kind.UNPACK, state=Job.State.QUEUED).get()
    assert response.status_code == 302
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert job.image == half
    assert job.reference == "127.0.0.1:5000/team/tools:1"
    # while it is queued, a second retry is refused with a message, not a second job
    again = admin_client.post(reverse("images:retry_unpack", args=[half.pk]))
    assert again["Location"] == reverse("images:detail", args=[half.pk])
    assert "being unpacked already" in [str(m) for m in get_messages(again.wsgi_request)][-1]
    assert Job.objects.filter(kind=Job.Kind.UNPACK).count() == 2


def test_retry_refuses_an_image_that_is_unpacked(catalog: dict[str, Any], admin_user: User) -> None:
    with pytest.raises(Conflict, match="unpacked already"):
        image_unpack_retry(image=catalog["app1"], user=admin_user)
    assert not Job.objects.exists()


def test_repull_queues_a_pull_of_its_reference(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    response = admin_client.post(reverse("images:pull", args=[catalog["app2"].pk]))
    job = Job.objects.get(kind=Job.Kind.PULL)
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert job.reference == "127.0.0.1:5000/team/app:2"
    assert job.created_by is not None
    assert job.created_by.get_username() == "admin"


def test_repull_of_an_untagged_image_pulls_its_digest(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    untagged = catalog["untagged"]
    admin_client.post(reverse("images:pull", args=[untagged.pk]))
    assert Job.objects.get().reference == f"127.0.0.1:5000/team/old@{untagged.manifest_digest}"


def test_repull_of_an_image_without_a_reference_says_why(admin_client: Client) -> None:
    lone = image("imported", [layer("x")])
    response = admin_client.post(reverse("images:pull", args=[lone.pk]))
    assert response["Location"] == reverse("images:detail", args=[lone.pk])
    assert "no reference to pull" in str(next(iter(get_messages(response.wsgi_request))))
    assert not Job.objects.exists()


def test_push_queues_a_push_to_the_reference_given(
    admin_client: Client, catalog: dict[str, Any]
) -> None:
    response = admin_client.post(
        reverse("images:push", args=[catalog["app1"].pk]),
        {"reference": "127.0.0.1:5001/mirror/app:1"},
    )
    job = Job.objects.get(kind=Job.Kind.PUSH)
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    assert job.reference == "127.0.0.1:5001/mirror/app:1"
    assert job.image == catalog["app1"]


@pytest.mark.parametrize(
    ("reference", "message"),
    [("NOT A REF", "contains whitespace"), ("127.0.0.1:5001/Mirror/app:1", "must be lowercase")],
)
def test_push_form_shows_a_bad_reference_next_to_the_field(
    admin_client: Client,
    catalog: dict[str, Any],
    delete_plan: Callable[[int], None],
    reference: str,
    message: str,
) -> None:
    response = admin_client.post(
        reverse("images:push", args=[catalog["app1"].pk]), {"reference": reference}
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'class="error field-error"' in html
    assert message in html.lower()
    assert not Job.objects.exists()


def test_push_default_is_its_own_reference(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    html = admin_client.get(reverse("images:detail", args=[catalog["app1"].pk])).content.decode()
    assert 'value="127.0.0.1:5000/team/app:1"' in html


def test_save_queues_an_export_to_the_exports_folder(
    admin_client: Client, catalog: dict[str, Any], settings: Settings, tmp_path: Path
) -> None:
    settings.LAYERHUB_EXPORT_DIR = tmp_path / "exports"
    response = admin_client.post(
        reverse("images:save", args=[catalog["app1"].pk]), {"format": "oci"}
    )
    job = Job.objects.get(kind=Job.Kind.EXPORT)
    assert response["Location"] == reverse("jobs:detail", args=[job.pk])
    target = Path(job.params["path"])
    assert target.parent == tmp_path / "exports"
    assert target.name.startswith(f"app_1-{catalog['app1'].image_id}-")
    assert target.name.endswith("-oci.tar")
    assert job.params["format"] == "oci"
    assert job.params["images"] == [catalog["app1"].manifest_digest]


def test_create_container_posts_the_image(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    html = admin_client.get(reverse("images:detail", args=[catalog["app1"].pk])).content.decode()
    # containers:create once that page exists; until then its list, told which image
    assert (
        f'name="image" value="{catalog["app1"].pk}"' in html
        or f"?image={catalog['app1'].pk}" in html
    )


def test_delete_shows_what_it_frees_then_deletes(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    delete_plan(5_000_000)
    app2 = catalog["app2"]
    html = admin_client.get(reverse("images:detail", args=[app2.pk])).content.decode()
    assert "Deleting frees <strong" in html
    assert "5MB" in html
    assert "(5000000 bytes)" in html
    assert "Delete image and 2 tags" in html

    response = admin_client.post(reverse("images:delete", args=[app2.pk]))

    assert response["Location"] == reverse("images:list")
    assert not Image.objects.filter(pk=app2.pk).exists()
    assert not Tag.objects.filter(name__in=["2", "latest"]).exists()
    assert Layer.objects.filter(pk=catalog["base"].pk).exists()  # the others still use it
    (message,) = [str(m) for m in get_messages(response.wsgi_request)]
    assert message == f"Deleted image {app2.image_id} and 2 tags: freed 5,000,000 bytes"


def test_delete_of_an_image_a_container_uses_says_so(
    admin_client: Client, catalog: dict[str, Any], delete_plan: Callable[[int], None]
) -> None:
    from layerhub.containers.models import Container

    Container.objects.create(
        container_id="c" * 64, name="busy", image=catalog["app1"], team=default_team()
    )
    response = admin_client.post(reverse("images:delete", args=[catalog["app1"].pk]))
    assert response["Location"] == reverse("images:detail", args=[catalog["app1"].pk])
    assert "used by container(s): busy" in str(next(iter(get_messages(response.wsgi_request))))
    assert Image.objects.filter(pk=catalog["app1"].pk).exists()
    html = admin_client.get(reverse("images:detail", args=[catalog["app1"].pk])).content.decode()
    assert "1 container uses this image" in html


@pytest.mark.parametrize("name", ["pull", "push", "save", "delete", "retry_unpack"])
def test_actions_are_post_only_and_need_a_login(
    client: Client, admin_client: Client, catalog: dict[str, Any], name: str
) -> None:
    url = reverse(f"images:{name}", args=[catalog["app1"].pk])
    assert admin_client.get(url).status_code == 405
    assert client.post(url).status_code == 302
    assert admin_client.post(reverse(f"images:{name}", args=[999])).status_code == 404


# -- bounded queries ---------------------------------------------------------------------------


def grow_catalog(n: int) -> Image:
    """``n`` images on one shared base, three layers each, mostly tagged; returns one."""
    base = layer("base", unpacked=50_000)
    mid = layer("mid", unpacked=5_000, parent=base)
    images = []
    for i in range(n):
        top = layer(f"top{i}", unpacked=100 + i, parent=mid)
        refs = (f"fam{i % 4}/app:{i}",) if i % 5 else ()
        images.append(
            image(
                f"n{i}", [base, mid, top], refs=refs, repository=None if refs else f"fam{i % 4}/app"
            )
        )
    for i in range(0, n, 3):
        Job.objects.create(
            kind=Job.Kind.UNPACK, image=images[i], state=Job.State.SUCCEEDED, reference=f"r{i}"
        )
    return images[n // 2]


@pytest.mark.parametrize("n", [3, 30])
def test_queries_do_not_grow_with_the_catalog(
    admin_client: Client,
    django_assert_max_num_queries: Callable[[int], Any],
    delete_plan: Callable[[int], None],
    n: int,
) -> None:
    some = grow_catalog(n)
    admin_client.get(reverse("dashboard:home"))  # the session is loaded once before counting
    # session and user, then the list's count, its page of keys, their images and tags
    with django_assert_max_num_queries(6):
        assert admin_client.get(reverse("images:list")).status_code == 200
    with django_assert_max_num_queries(6):
        assert (
            admin_client.get(reverse("images:list"), {"q": "fam1", "sort": "-unique"}).status_code
            == 200
        )
    # the delete plan's own queries are its module's (a stand-in here); two more: the teams
    # the push form offers and whether the user may delete the image outright
    with django_assert_max_num_queries(15):
        assert admin_client.get(reverse("images:detail", args=[some.pk])).status_code == 200
    # the overview's 15th: the containers whose writable layers it measures; 16th: the
    # user's own teams, whose usage it shows (three aggregates each; this admin is in none);
    # 17th: the hosts, listed when there is more than one
    with django_assert_max_num_queries(17):
        assert admin_client.get(reverse("dashboard:home")).status_code == 200


# -- first run: an admin and how to sign in ------------------------------------------------------


def load_dev_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "layerhub_dev_script", ROOT / "scripts" / "dev.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_run_creates_an_admin_and_prints_how_to_sign_in(
    client: Client,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    django_user_model: type[User],
) -> None:
    dev = load_dev_script()
    monkeypatch.setattr("django.setup", lambda: None)  # already set up by pytest-django
    monkeypatch.setattr("django.db.connections.close_all", lambda: None)
    django_user_model.objects.create_user("admin", password="someone else's")  # not a superuser

    dev.first_run_admin(8123)

    out = capsys.readouterr().out
    password = re.search(r"password:\s+(\S+)", out)
    assert password, out
    assert "http://127.0.0.1:8123/login/" in out
    assert "user name: admin2" in out
    assert client.login(username="admin2", password=password.group(1))
    assert django_user_model.objects.get(username="admin2").is_superuser
    assert len(password.group(1)) >= 16

    dev.first_run_admin(8123)  # a superuser exists now: nothing created, nothing printed
    assert capsys.readouterr().out == ""
    assert django_user_model.objects.filter(is_superuser=True).count() == 1


# -- the error pages ---------------------------------------------------------------------------


def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug")


urlpatterns = [path("broken/", broken)]


@pytest.fixture
def production(settings: Settings) -> None:
    settings.DEBUG = False
    settings.ALLOWED_HOSTS = ["testserver"]


def test_500_page_in_the_sites_style(
    admin_client: Client, settings: Settings, production: None
) -> None:
    settings.ROOT_URLCONF = __name__
    admin_client.raise_request_exception = False
    response = admin_client.get("/broken/")
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong" in html
    assert 'class="brand"' in html
    assert "layerhub" in html
    assert "RuntimeError" not in html
    assert "Traceback" not in html


def test_404_page_in_the_sites_style(admin_client: Client, production: None) -> None:
    response = admin_client.get("/images/424242/")
    assert response.status_code == 404
    html = response.content.decode()
    assert "Not found" in html
    assert 'class="topbar"' in html
    assert reverse("images:list") in html


# -- against a real registry and store ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("eager")
def test_a_pulled_image_page_and_its_actions_with_real_services(
    admin_client: Client,
    request: pytest.FixtureRequest,
    delete_plan: Callable[[int], None],
    settings: Settings,
    tmp_path: Path,
) -> None:
    host = request.getfixturevalue("registry").host
    settings.LAYERHUB_EXPORT_DIR = tmp_path / "exports"
    reference = f"{host}/team/app:v1"
    image_pull(team=default_team(), reference=reference)
    pulled = Image.objects.get()
    assert not pulled.layers.filter(unpacked_at__isnull=True).exists()

    listing = admin_client.get(reverse("images:list")).content.decode()
    assert rows_of(listing) == [(f"{host}/team/app", "v1")]
    page = admin_client.get(reverse("images:detail", args=[pulled.pk])).content.decode()
    assert f"{host}/team/app:v1" in page
    assert "not unpacked" not in page
    for row in pulled.image_layers.select_related("layer"):
        assert f'data-layer="{row.layer.chain_id}"' in page
        assert f'title="{row.layer.unpacked_size} bytes"' in page

    # save runs its job here (eager): the archive is there for the job page to offer
    saved = admin_client.post(reverse("images:save", args=[pulled.pk]), {"format": "docker"})
    export = Job.objects.get(kind=Job.Kind.EXPORT)
    assert saved["Location"] == reverse("jobs:detail", args=[export.pk])
    assert export.state == Job.State.SUCCEEDED, export.error
    archive = Path(export.params["path"])
    assert archive.is_file()
    assert archive.stat().st_size > 0

    pushed = admin_client.post(
        reverse("images:push", args=[pulled.pk]), {"reference": f"{host}/team/copy:1"}
    )
    push = Job.objects.get(kind=Job.Kind.PUSH)
    assert pushed["Location"] == reverse("jobs:detail", args=[push.pk])
    assert push.state == Job.State.SUCCEEDED, push.error

    blobs = get_store().root / "blobs" / "sha256"
    layer_blob = blobs / pulled.image_layers.get(position=1).layer.digest.removeprefix("sha256:")
    assert layer_blob.exists()
    deleted = admin_client.post(reverse("images:delete", args=[pulled.pk]))
    assert deleted["Location"] == reverse("images:list")
    assert not Image.objects.exists()
    assert not layer_blob.exists()  # rows first, then the files once the delete commits


def test_the_sort_keys_are_the_sizes_shown(catalog: dict[str, Any]) -> None:
    """The list sorts by cheaper expressions than it shows: they must be the same figures."""
    sorted_by = Image.objects.annotate(
        shared_key=_bytes_in_layers(shared=True), unique_key=_bytes_in_layers(shared=False)
    )
    keys = {
        row["pk"]: (row["shared_key"], row["unique_key"])
        for row in sorted_by.values("pk", "shared_key", "unique_key")
    }
    with_sizes: Any = sizes.images_with_sizes()  # annotations the type checker cannot see
    shown = {
        row["pk"]: (row["shared_size"], row["unique_size"])
        for row in with_sizes.values("pk", "shared_size", "unique_size")
    }
    assert keys == shown
    assert len(set(keys.values())) == 4  # not trivially equal
