"""SQL queries per page do not grow with the catalog.

Each page is rendered for a small seeded catalog and then for a larger one, and must make no
more queries the second time than the first (pytest-django's ``django_assert_max_num_queries``
with the bound the small catalog gave). The sharing picture also has a fixed bound.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from layerhub.images.models import Image, Layer, Repository, Tag

pytestmark = pytest.mark.django_db

# the small catalog is big enough that every page shows everything it can (a base shared by
# other images, the most shared layers): a larger one may then add no query
SMALL, LARGE = 12, 60
# session, user; families, totals; the page's order, images, tags, repositories, layer rows,
# layers with their users
SHARING_QUERIES = 10

MaxQueries = Callable[..., AbstractContextManager[Any]]


def seed(images: int) -> None:
    call_command("seed_demo", images=images, seed=11, stdout=StringIO())


def empty_catalog() -> None:
    """Remove every image, tag, layer and repository (layers top first: a parent is protected)."""
    Tag.objects.all().delete()
    Image.objects.all().delete()
    while Layer.objects.exists():
        Layer.objects.filter(children__isnull=True).delete()
    Repository.objects.all().delete()


def base_image() -> Image:
    """The catalog's first image: the bottom of the biggest family (seed_demo starts with its
    bases), whose page lists more sharers as the catalog grows."""
    return Image.objects.order_by("pk").first()  # type: ignore[return-value]


def base_layer_hex() -> str:
    return base_image().image_layers.get(position=0).layer.chain_id.split(":", 1)[1]


# every page of the navigation, and the pages of an image and a layer (by a function of the
# seeded catalog, since their address names an object)
PAGES: dict[str, Callable[[], str]] = {
    "dashboard:home": lambda: reverse("dashboard:home"),
    "images:list": lambda: reverse("images:list"),
    "dashboard:sharing": lambda: reverse("dashboard:sharing"),
    "containers:list": lambda: reverse("containers:list"),
    "jobs:list": lambda: reverse("jobs:list"),
    "images:detail": lambda: reverse("images:detail", args=[base_image().pk]),
    "layers:detail": lambda: reverse("layers:detail", args=[base_layer_hex()]),
}


def render(client: Client, url: str) -> tuple[int, int]:
    """(status, queries) of a GET, after one warm-up GET (the session's first use)."""
    client.get(url)
    with CaptureQueriesContext(connection) as queries:
        status = client.get(url).status_code
    return status, len(queries)


@pytest.mark.parametrize("name", list(PAGES))
def test_a_page_makes_no_more_queries_for_a_bigger_catalog(
    admin_client: Client, django_assert_max_num_queries: MaxQueries, name: str
) -> None:
    seed(SMALL)
    status, bound = render(admin_client, PAGES[name]())
    assert status == 200

    empty_catalog()
    seed(LARGE)
    assert Image.objects.count() == LARGE
    url = PAGES[name]()
    admin_client.get(url)
    with django_assert_max_num_queries(bound):
        response = admin_client.get(url)
    assert response.status_code == 200


@pytest.mark.parametrize("images", [SMALL, LARGE, 300])
def test_the_sharing_picture_has_a_fixed_query_bound(
    admin_client: Client, django_assert_max_num_queries: MaxQueries, images: int
) -> None:
    seed(images)
    url = reverse("dashboard:sharing")
    admin_client.get(url)
    with django_assert_max_num_queries(SHARING_QUERIES):
        first = admin_client.get(url)
    assert first.status_code == 200
    assert first.content.count(b"<svg") >= 1
    # a later page, smaller pages: the same bound
    with django_assert_max_num_queries(SHARING_QUERIES):
        later = admin_client.get(url, {"page": 2, "rows": 10})
    assert later.status_code == 200
