"""What every page shares: sign-in, the error pages, the one permission hook."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse

from layerhub.accounts.models import Membership, Role
from layerhub.core.middleware import UserErrorMiddleware
from layerhub.core.permissions import restrict
from layerhub.engine.errors import Conflict, ImageNotFound, InvalidReference, LayerhubError
from layerhub.images.models import Repository
from tests.support.teams import default_team

pytestmark = pytest.mark.django_db

PAGES = [
    "dashboard:home",
    "dashboard:sharing",
    "images:list",
    "containers:list",
    "jobs:list",
    "teams:list",
    "tokens:list",
    "audit:list",
]


@pytest.mark.parametrize("name", PAGES)
def test_every_page_needs_a_signed_in_user(client: Client, name: str) -> None:
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


def test_the_health_check_answers_without_a_login(client: Client) -> None:
    assert client.get("/healthz").status_code in (200, 503)


def test_sign_in_and_out(client: Client, django_user_model: type[User]) -> None:
    django_user_model.objects.create_user("ada", password="a long passphrase")
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b"Sign in" in page.content

    wrong = client.post(reverse("login"), {"username": "ada", "password": "nope"})
    assert wrong.status_code == 200
    assert b"do not match" in wrong.content

    right = client.post(reverse("login"), {"username": "ada", "password": "a long passphrase"})
    assert right.status_code == 302
    assert right["Location"] == reverse("dashboard:home")
    home = client.get(reverse("dashboard:home"))
    assert home.status_code == 200
    assert b"ada" in home.content

    client.post(reverse("logout"))
    assert client.get(reverse("dashboard:home")).status_code == 302


def test_an_unknown_address_is_the_sites_404(admin_client: Client, settings: object) -> None:
    response = admin_client.get("/no/such/page")
    assert response.status_code == 404


def test_restrict_gives_anonymous_users_nothing(django_user_model: type[User]) -> None:
    Repository.objects.create(team=default_team(), registry="127.0.0.1:5000", name="team/app")
    user = django_user_model.objects.create_user("bob")
    assert restrict(Repository.objects.all(), AnonymousUser()).count() == 0
    assert restrict(Repository.objects.all(), None).count() == 0
    # a user in no team sees no private repository; a member of its team does
    assert restrict(Repository.objects.all(), user).count() == 0
    Membership.objects.create(team=default_team(), user=user, role=Role.VIEWER)
    assert restrict(Repository.objects.all(), user).count() == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ImageNotFound("no such image: x"), 404),
        (Conflict("the container name 'a' is already in use"), 409),
        (InvalidReference("invalid reference 'A B'"), 400),
    ],
)
def test_a_user_error_is_a_page_with_its_message(
    rf: RequestFactory, admin_user: User, error: LayerhubError, status: int
) -> None:
    request = rf.get("/images/")
    request.user = admin_user
    middleware = UserErrorMiddleware(lambda r: HttpResponse())
    response = middleware.process_exception(request, error)
    assert response is not None
    assert response.status_code == status
    assert str(error).encode() in response.content.replace(b"&#x27;", b"'")
    assert middleware.process_exception(request, RuntimeError("a bug")) is None


@pytest.mark.parametrize(
    ("url", "current"),
    [
        ("images:list", "Images"),
        ("images:search", "Search"),
        ("images:packages", "Search"),
        ("dashboard:home", "Overview"),
    ],
)
def test_the_nav_marks_one_page_as_current(admin_client: Client, url: str, current: str) -> None:
    html = admin_client.get(reverse(url)).content.decode()
    nav = html[html.index("<nav") : html.index("</nav>")]
    marked = re.findall(r'aria-current="page">([^<]+)</a>', nav)
    assert marked == [current]
