"""The teams, tokens, registry logins and audit log pages, and what sharing must not leak on
the layer, image and overview pages.

The permission matrix is one table: each page and form, against a viewer, developer,
maintainer and owner of team a, the owner of team b, staff and an anonymous visitor. A form
that is allowed writes one audit entry by its user; a refused one writes none.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings

from layerhub.accounts.models import AuditEntry, Membership, Role, Team, Token, token_hash
from layerhub.accounts.services import audit, token_authenticate, token_create
from layerhub.containers.models import Container
from layerhub.core.humanize import human_size
from layerhub.engine.registry import RegistryClient
from layerhub.images.layer_counts import image_layers_add
from layerhub.images.models import Image, Layer, RegistryCredential, Repository, Tag
from layerhub.images.selectors import registry_access_list, registry_tls_state
from layerhub.images.sizes import team_usage
from tests.support.peers import require_peer
from tests.support.registry import free_port, run_registry

pytestmark = pytest.mark.django_db

WHO = ("viewer", "developer", "maintainer", "owner", "other", "staff", "anonymous")
LOGIN = "login"  # a redirect to the sign-in page


@dataclass
class World:
    """Team a with a user of each role (and dave, a viewer to re-role or remove), team b
    with its owner, staff, and people in no team (carol to add, erin who owns a token);
    a personal token of each, a robot token and a registry login in each team."""

    a: Team
    b: Team
    users: dict[str, User]
    carol: User
    dave: Membership
    personal: dict[str, Token]
    erins_token: Token
    robot_a: Token
    robot_b: Token
    login_a: RegistryCredential
    login_b: RegistryCredential


def _login(team: Team, host: str, username: str, password: str) -> RegistryCredential:
    saved = RegistryCredential(team=team, host=host, username=username)
    saved.set_password(password)
    saved.save()
    return saved


@pytest.fixture
def world(django_user_model: type[User]) -> World:
    a = Team.objects.create(name="a")
    b = Team.objects.create(name="b")
    users: dict[str, User] = {}
    for role in Role:
        users[role.value] = django_user_model.objects.create_user(f"a-{role.value}")
        Membership.objects.create(team=a, user=users[role.value], role=role)
    users["other"] = django_user_model.objects.create_user("b-owner")
    Membership.objects.create(team=b, user=users["other"], role=Role.OWNER)
    users["staff"] = django_user_model.objects.create_user("staff", is_staff=True)
    dave = django_user_model.objects.create_user("dave")
    erin = django_user_model.objects.create_user("erin")
    personal = {who: token_create(name="mine", actor=user)[0] for who, user in users.items()}
    return World(
        a=a,
        b=b,
        users=users,
        carol=django_user_model.objects.create_user("carol"),
        dave=Membership.objects.create(team=a, user=dave, role=Role.VIEWER),
        personal=personal,
        erins_token=token_create(name="erins", actor=erin)[0],
        robot_a=token_create(name="ci", actor=users["owner"], team=a)[0],
        robot_b=token_create(name="ci", actor=users["other"], team=b)[0],
        login_a=_login(a, "r.example", "a-bot", "a-password"),
        login_b=_login(b, "r.example", "b-bot", "b-password"),
    )


def signed_in(client: Client, world: World, who: str) -> Client:
    if who != "anonymous":
        client.force_login(world.users[who])
    return client


@pytest.fixture
def registry_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every registry takes every login (the check itself is tested against a real one)."""
    monkeypatch.setattr(RegistryClient, "login", lambda self: None)


Url = Callable[[World, str], str]


def url(name: str, *args: Callable[[World], Any]) -> Url:
    return lambda world, who: reverse(name, args=[arg(world) for arg in args])


def team_a(world: World) -> str:
    return world.a.name


def own_token(world: World, who: str) -> str:
    token = world.personal.get(who, world.personal["owner"])
    return reverse("tokens:revoke", args=[token.pk])


# The one table. Each row: what is asked, how, the form sent, and what each of
# viewer, developer, maintainer, owner (of team a), other (b's owner), staff, anonymous gets.
MATRIX: list[tuple[str, str, Url, dict[str, str] | None, str]] = [
    # -- teams
    ("teams list", "GET", url("teams:list"), None, "200 200 200 200 200 200 login"),
    ("team a's page", "GET", url("teams:detail", team_a), None, "200 200 200 200 404 200 login"),
    ("team b's page", "GET", url("teams:detail", lambda w: "b"), None,
     "404 404 404 404 200 200 login"),
    ("create a team", "POST", url("teams:create"), {"name": "new", "quota": "10GB"},
     "403 403 403 403 403 302 login"),
    ("set a quota", "POST", url("teams:quota", team_a), {"quota": "1GB"},
     "403 403 403 403 404 302 login"),
    ("add a member", "POST", url("teams:member_add", team_a),
     {"username": "carol", "role": "developer"}, "403 403 403 302 404 302 login"),
    ("change a role", "POST", url("teams:member_role", team_a, lambda w: w.dave.pk),
     {"role": "developer"}, "403 403 403 302 404 302 login"),
    ("remove a member", "POST", url("teams:member_remove", team_a, lambda w: w.dave.pk), None,
     "403 403 403 302 404 302 login"),
    ("remove b's member through a", "POST",
     url("teams:member_remove", team_a, lambda w: w.b.memberships.get(role=Role.OWNER).pk), None,
     "404 404 404 404 404 404 login"),
    # -- robot tokens
    ("robot tokens", "GET", url("teams:tokens", team_a), None, "403 403 200 200 404 200 login"),
    ("create a robot token", "POST", url("teams:tokens", team_a),
     {"name": "deploy", "scope": "read-write"}, "403 403 200 200 404 200 login"),
    ("revoke a robot token", "POST", url("teams:token_revoke", team_a, lambda w: w.robot_a.pk),
     None, "403 403 302 302 404 302 login"),
    ("revoke b's robot through a", "POST",
     url("teams:token_revoke", team_a, lambda w: w.robot_b.pk), None,
     "403 403 404 404 404 404 login"),
    # -- registry logins
    ("registry logins", "GET", url("teams:logins", team_a), None,
     "200 200 200 200 404 200 login"),
    ("add a registry login", "POST", url("teams:logins", team_a),
     {"host": "ghcr.io", "username": "ci", "password": "pat"}, "403 403 302 302 404 302 login"),
    ("delete a registry login", "POST",
     url("teams:login_delete", team_a, lambda w: w.login_a.pk), None,
     "403 403 302 302 404 302 login"),
    ("delete b's login through a", "POST",
     url("teams:login_delete", team_a, lambda w: w.login_b.pk), None,
     "404 404 404 404 404 404 login"),
    # -- personal tokens
    ("tokens", "GET", url("tokens:list"), None, "200 200 200 200 200 200 login"),
    ("create a token", "POST", url("tokens:list"), {"name": "laptop", "scope": "read"},
     "200 200 200 200 200 200 login"),
    ("revoke one's own token", "POST", own_token, None, "302 302 302 302 302 302 login"),
    ("revoke someone else's token", "POST", url("tokens:revoke", lambda w: w.erins_token.pk),
     None, "404 404 404 404 404 404 login"),
    # -- the audit log (b's owner reads b's log, not a's)
    ("audit log", "GET", url("audit:list"), None, "403 403 403 200 200 200 login"),
    ("audit log of team a", "GET", lambda w, who: reverse("audit:list") + "?team=a", None,
     "403 403 403 200 400 200 login"),
    ("audit log written to", "POST", url("audit:list"), None, "405 405 405 405 405 405 login"),
]  # fmt: skip


@pytest.mark.usefixtures("registry_accepts")
@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize(
    ("method", "address", "data", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in MATRIX],
)
def test_permission_matrix(
    client: Client,
    world: World,
    who: str,
    method: str,
    address: Url,
    data: dict[str, str] | None,
    expected: str,
) -> None:
    want = dict(zip(WHO, expected.split(), strict=True))[who]
    target = address(world, who)
    before = AuditEntry.objects.count()
    client = signed_in(client, world, who)
    response = client.post(target, data or {}) if method == "POST" else client.get(target)
    if want == LOGIN:
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))
    else:
        assert response.status_code == int(want), response.content.decode()[:2000]
    written = AuditEntry.objects.filter(pk__gt=_last_before(before)).order_by("pk")
    if method == "POST" and want in ("200", "302"):
        # an allowed act is on the record, once, under its user's name
        assert [entry.actor for entry in written] == [world.users[who]]
    else:
        assert not written.exists()


def _last_before(count: int) -> int:
    """The pk of the newest audit entry there was before the request."""
    entries = AuditEntry.objects.order_by("pk").values_list("pk", flat=True)
    return entries[count - 1] if count else 0


def test_a_refusal_says_which_role_it_takes(client: Client, world: World) -> None:
    response = signed_in(client, world, "developer").get(reverse("teams:tokens", args=["a"]))
    assert response.status_code == 403
    assert "you need the maintainer role in team a" in response.content.decode()


def test_the_navigation_offers_the_audit_log_to_owners_and_staff(
    client: Client, world: World
) -> None:
    for who, sees_audit in (("viewer", False), ("maintainer", False), ("owner", True)):
        client.force_login(world.users[who])
        nav = _nav(client.get(reverse("dashboard:home")).content.decode())
        assert reverse("teams:list") in nav
        assert reverse("tokens:list") in nav
        assert (reverse("audit:list") in nav) is sees_audit, who
    client.force_login(world.users["staff"])
    assert reverse("audit:list") in _nav(client.get(reverse("teams:list")).content.decode())


def _nav(html: str) -> str:
    found = re.search(r'<nav class="nav" aria-label="Main">(.*?)</nav>', html, re.S)
    assert found is not None
    return found.group(1)


# -- teams and members ----------------------------------------------------------------------


def test_the_teams_list_counts_people_repositories_and_bytes_against_the_quota(
    client: Client, world: World
) -> None:
    Repository.objects.create(team=world.a, registry="r.example", name="a/app")
    world.a.quota_bytes = 4000
    world.a.save()
    _image("app", [_layer("base", 1000, 500)], [("a/app", "1")], world.a)
    used = team_usage(world.a).logical_bytes
    assert used > 0
    html = signed_in(client, world, "viewer").get(reverse("teams:list")).content.decode()
    row = _row(html, "tr", "data-team", "a")
    assert _figure(row, "members") == "5"  # four roles and dave; the robot is no person
    assert _figure(row, "repositories") == "1"
    assert f'title="{used} bytes"' in row
    assert 'title="4000 bytes"' in row
    assert f"width: {100 * used / 4000:.3f}%" in row
    assert 'data-team="b"' not in html  # not a's viewer's team


def test_the_team_page_lists_people_and_roles_but_no_robots(client: Client, world: World) -> None:
    html = signed_in(client, world, "viewer").get(reverse("teams:detail", args=["a"])).content
    text = html.decode()
    members = re.findall(r'data-member="([^"]+)"', text)
    assert sorted(members) == ["a-developer", "a-maintainer", "a-owner", "a-viewer", "dave"]
    assert "robot$" not in text
    assert "<select" not in text  # a viewer reads roles, changes none


def test_an_owner_adds_changes_and_removes_members(client: Client, world: World) -> None:
    client = signed_in(client, world, "owner")
    add = client.post(
        reverse("teams:member_add", args=["a"]), {"username": "carol", "role": "maintainer"}
    )
    assert add.status_code == 302
    carol = Membership.objects.get(team=world.a, user=world.carol)
    assert carol.role == Role.MAINTAINER
    role = client.post(reverse("teams:member_role", args=["a", carol.pk]), {"role": "owner"})
    assert role.status_code == 302
    carol.refresh_from_db()
    assert carol.role == Role.OWNER
    gone = client.post(reverse("teams:member_remove", args=["a", carol.pk]))
    assert gone.status_code == 302
    assert not Membership.objects.filter(pk=carol.pk).exists()
    assert list(
        AuditEntry.objects.filter(team=world.a, target="carol")
        .order_by("pk")
        .values_list("action", "actor_name")
    ) == [("member.add", "a-owner"), ("member.role", "a-owner"), ("member.remove", "a-owner")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"username": "nobody-here", "role": "viewer"}, "no such user: nobody-here"),
        ({"username": "dave", "role": "viewer"}, "dave is a member already"),
        ({"username": "carol", "role": "emperor"}, "Select a valid choice"),
        ({"username": "", "role": "viewer"}, "This field is required"),
        ({"username": "x" * 500, "role": "viewer"}, "at most 150 characters"),
    ],
)
def test_adding_a_member_refuses_what_makes_no_sense(
    client: Client, world: World, data: dict[str, str], message: str
) -> None:
    before = Membership.objects.count()
    response = signed_in(client, world, "owner").post(reverse("teams:member_add", args=["a"]), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Membership.objects.count() == before


def test_a_robot_is_added_through_its_token_alone(client: Client, world: World) -> None:
    robot = world.robot_b.user.get_username()
    response = signed_in(client, world, "owner").post(
        reverse("teams:member_add", args=["a"]), {"username": robot, "role": "owner"}
    )
    assert response.status_code == 400
    assert f"no such user: {robot}" in response.content.decode()
    robot_a = Membership.objects.get(user=world.robot_a.user)
    # nor re-roled or removed as a person
    role = client.post(reverse("teams:member_role", args=["a", robot_a.pk]), {"role": "owner"})
    assert role.status_code == 404


def test_the_last_owner_is_never_removed_or_demoted(client: Client, world: World) -> None:
    client = signed_in(client, world, "owner")
    owner = Membership.objects.get(team=world.a, role=Role.OWNER)
    for response in (
        client.post(reverse("teams:member_remove", args=["a", owner.pk])),
        client.post(reverse("teams:member_role", args=["a", owner.pk]), {"role": "viewer"}),
    ):
        assert response.status_code == 400
        assert "team a must keep an owner" in response.content.decode()
    owner.refresh_from_db()
    assert owner.role == Role.OWNER
    assert not AuditEntry.objects.filter(action__startswith="member.").exists()
    # with a second owner, the first may go (and their team's page is no longer theirs)
    Membership.objects.filter(pk=world.dave.pk).update(role=Role.OWNER)
    left = client.post(reverse("teams:member_remove", args=["a", owner.pk]))
    assert left.status_code == 302
    assert left["Location"] == reverse("teams:list")


@pytest.mark.parametrize(
    ("text", "stored"),
    [("2GiB", 2 * 1024**3), ("500MB", 500_000_000), ("1073741824", 1 << 30), ("", None)],
)
def test_staff_set_a_quota(client: Client, world: World, text: str, stored: int | None) -> None:
    response = signed_in(client, world, "staff").post(
        reverse("teams:quota", args=["a"]), {"quota": text}
    )
    assert response.status_code == 302
    world.a.refresh_from_db()
    assert world.a.quota_bytes == stored
    page = client.get(reverse("teams:detail", args=["a"])).content.decode()
    quota = _figure(page, "quota")
    assert quota == ("no limit" if stored is None else human_size(stored))


@pytest.mark.parametrize(
    "text", ["abc", "-1", "1e9", "12 parsecs", "99999999999TB", "NaN", "0x10", "1" * 40]
)
def test_a_nonsense_quota_is_a_form_error(client: Client, world: World, text: str) -> None:
    world.a.quota_bytes = 1000
    world.a.save()
    response = signed_in(client, world, "staff").post(
        reverse("teams:quota", args=["a"]), {"quota": text}
    )
    assert response.status_code == 400
    assert re.search(r"is not a size|at most 32 characters", response.content.decode())
    world.a.refresh_from_db()
    assert world.a.quota_bytes == 1000
    assert not AuditEntry.objects.filter(action="team.quota").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Bad Name", "a team name is 1-63 lowercase letters"),
        ("a", "there is a team named a already"),
        ("-x", "a team name is 1-63 lowercase letters"),
        ("", "This field is required"),
    ],
)
def test_creating_a_team_refuses_a_bad_name(
    client: Client, world: World, name: str, message: str
) -> None:
    response = signed_in(client, world, "staff").post(
        reverse("teams:create"), {"name": name, "quota": ""}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Team.objects.count() == 3  # a, b and the default team


def test_staff_create_a_team_they_own(client: Client, world: World) -> None:
    response = signed_in(client, world, "staff").post(
        reverse("teams:create"), {"name": "web", "quota": "20GB"}
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("teams:detail", args=["web"])
    web = Team.objects.get(name="web")
    assert web.quota_bytes == 20 * 1000**3
    assert Membership.objects.get(team=web).user == world.users["staff"]


# -- tokens: the secret is shown once ------------------------------------------------------


@pytest.mark.parametrize("kind", ["personal", "robot"])
def test_a_tokens_secret_is_shown_once_and_never_again(
    client: Client, world: World, kind: str
) -> None:
    page = reverse("tokens:list") if kind == "personal" else reverse("teams:tokens", args=["a"])
    client = signed_in(client, world, "owner")
    created = client.post(page, {"name": "deploy", "scope": "read-write"})
    assert created.status_code == 200
    assert created["Cache-Control"] == "no-store"
    found = re.search(r'value="(lh_[A-Za-z0-9_-]+)"[^>]*data-secret', created.content.decode())
    assert found is not None
    secret = found.group(1)
    token = Token.objects.get(name="deploy")
    assert token.kind == kind
    assert token.key_hash == token_hash(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(dict(client.session))  # not kept for a later page
    assert token_authenticate(secret) == token

    again = client.get(page).content.decode()
    assert secret not in again
    assert "data-secret" not in again
    assert token.key_prefix in again  # what tells it apart
    assert secret.startswith(token.key_prefix)
    assert not any(
        secret in str(entry.detail) or secret in entry.target for entry in AuditEntry.objects.all()
    )

    revoke = (
        reverse("tokens:revoke", args=[token.pk])
        if kind == "personal"
        else reverse("teams:token_revoke", args=["a", token.pk])
    )
    assert client.post(revoke).status_code == 302
    assert token_authenticate(secret) is None  # refused at once
    listed = client.get(page).content.decode()
    assert "revoked" in _row(listed, "tr", "data-token", str(token.pk))


def test_the_tokens_page_lists_prefix_scope_and_last_use(client: Client, world: World) -> None:
    token, secret = token_create(name="ci-box", actor=world.users["viewer"], scope="read-write")
    assert token_authenticate(secret) is not None  # stamps its last use
    html = signed_in(client, world, "viewer").get(reverse("tokens:list")).content.decode()
    row = _row(html, "tr", "data-token", str(token.pk))
    assert token.key_prefix in row
    assert "read-write" in row
    assert "never" not in row  # it was used
    mine = _row(html, "tr", "data-token", str(world.personal["viewer"].pk))
    assert "never" in mine
    assert world.erins_token.key_prefix not in html  # someone else's


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "scope": "read"}, "This field is required"),
        ({"name": "x", "scope": "admin"}, "Select a valid choice"),
        ({"name": "n" * 101, "scope": "read"}, "at most 100 characters"),
    ],
)
def test_a_token_form_refuses_nonsense(
    client: Client, world: World, data: dict[str, str], message: str
) -> None:
    before = Token.objects.count()
    response = signed_in(client, world, "owner").post(reverse("tokens:list"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Token.objects.count() == before


def test_a_robot_name_is_taken_once_per_team(client: Client, world: World) -> None:
    response = signed_in(client, world, "owner").post(
        reverse("teams:tokens", args=["a"]), {"name": "ci", "scope": "read"}
    )
    assert response.status_code == 400
    assert "team a already has a robot named ci" in response.content.decode()


# -- registry logins ------------------------------------------------------------------------


def test_members_see_their_teams_logins_never_a_password(client: Client, world: World) -> None:
    html = signed_in(client, world, "viewer").get(reverse("teams:logins", args=["a"])).content
    text = html.decode()
    row = _row(text, "tr", "data-registry", "r.example")
    assert "a-bot" in row
    assert "b-bot" not in text  # team b's login for the same registry
    assert "a-password" not in text
    assert "b-password" not in text
    assert "Log out" not in text  # a viewer manages no login
    assert 'name="password"' not in text


def test_the_tls_state_and_access_list_are_the_teams_own(world: World, settings: Settings) -> None:
    settings.LAYERHUB_INSECURE_REGISTRIES = ()
    RegistryCredential.objects.filter(pk=world.login_a.pk).update(insecure=True)
    assert registry_tls_state("r.example", team=world.a).insecure
    # b's login for the same registry is not marked: a's mark is not b's
    assert not registry_tls_state("r.example", team=world.b).insecure
    b_rows = {row.registry: row for row in registry_access_list(world.b)}
    assert b_rows["r.example"].username == "b-bot"
    assert b_rows["r.example"].login == world.login_b
    assert not b_rows["r.example"].tls.insecure
    RegistryCredential.objects.filter(pk=world.login_b.pk).delete()
    assert "r.example" not in {row.registry for row in registry_access_list(world.b)}


def test_login_list_shows_a_teams_own_logins(world: World, settings: Settings) -> None:
    settings.LAYERHUB_REGISTRY_MIRRORS = {}
    settings.LAYERHUB_INSECURE_REGISTRIES = ()

    def listed(*args: str) -> str:
        out = StringIO()
        call_command("login", "--list", *args, stdout=out)
        return out.getvalue()

    assert "b-bot" in listed("--team", "b")
    assert "a-bot" not in listed("--team", "b")
    # a member who is not staff sees their team's, whatever they ask
    mine = listed("--user", "a-viewer")
    assert "a-bot" in mine
    assert "b-bot" not in mine
    with pytest.raises(CommandError, match="no such team: b"):
        listed("--user", "a-viewer", "--team", "b")


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real registry behind htpasswd basic auth (tester / s3cret!)."""
    require_peer("docker-registry")
    with run_registry(tmp_path_factory.mktemp("registry-basic"), auth="basic") as registry:
        yield registry


def test_a_login_is_checked_against_the_registry(
    client: Client, world: World, basic_registry: Any, settings: Settings
) -> None:
    settings.LAYERHUB_REGISTRY_RETRIES = 0
    client = signed_in(client, world, "maintainer")
    page = reverse("teams:logins", args=["a"])
    host = basic_registry.host
    wrong = client.post(page, {"host": host, "username": "tester", "password": "nope"})
    assert wrong.status_code == 400
    text = wrong.content.decode()
    assert re.search(
        r"class=\"error\"[^>]*>[^<]*(denied|unauthorized|login|credentials)", text, re.I
    )
    assert "nope" not in text  # the password is not sent back
    assert not RegistryCredential.objects.filter(host=host).exists()
    assert not AuditEntry.objects.filter(action="registry.login").exists()

    right = client.post(
        page, {"host": f"http://{host}/", "username": "tester", "password": "s3cret!"}
    )
    assert right.status_code == 302
    saved = RegistryCredential.objects.get(team=world.a, host=host)
    assert (saved.username, saved.get_password()) == ("tester", "s3cret!")
    entry = AuditEntry.objects.get(action="registry.login")
    assert (entry.team, entry.target, entry.actor) == (world.a, host, world.users["maintainer"])
    listed = client.get(page).content.decode()
    assert "tester" in _row(listed, "tr", "data-registry", host)
    assert "s3cret!" not in listed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"host": "not a host!", "username": "u", "password": "p"}, "invalid registry host"),
        ({"host": "r.example:99999", "username": "u", "password": "p"}, "is not in 1-65535"),
        ({"host": "", "username": "u", "password": "p"}, "This field is required"),
        ({"host": "ghcr.io", "username": "", "password": "p"}, "This field is required"),
    ],
)
def test_a_login_form_refuses_nonsense(
    client: Client, world: World, data: dict[str, str], message: str
) -> None:
    response = signed_in(client, world, "owner").post(reverse("teams:logins", args=["a"]), data)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_an_unreachable_registry_is_a_form_error(
    client: Client, world: World, settings: Settings
) -> None:
    settings.LAYERHUB_REGISTRY_RETRIES = 0
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    response = signed_in(client, world, "owner").post(
        reverse("teams:logins", args=["a"]), {"host": host, "username": "u", "password": "p"}
    )
    assert response.status_code == 400
    assert host in response.content.decode()
    assert not RegistryCredential.objects.filter(host=host).exists()


# -- the audit log --------------------------------------------------------------------------


def test_an_owner_reads_their_teams_log_filtered_and_paged(client: Client, world: World) -> None:
    for i in range(60):
        audit(actor=world.users["developer"], action="image.pull", team=world.a, target=f"app:{i}")
    audit(actor=world.users["owner"], action="image.delete", team=world.a, target="app:old")
    audit(actor=world.users["other"], action="image.pull", team=world.b, target="b/secret:1")
    audit(actor=None, action="image.pull", target="no team")
    audit(actor=world.users["owner"], action="member.add", team=world.a, target="carol")
    audit(actor=world.users["owner"], action="member.remove", team=world.a, target="carol")
    client = signed_in(client, world, "owner")
    first = client.get(reverse("audit:list")).content.decode()
    assert "b/secret" not in first
    assert "no team" not in first
    assert "app:old" in first  # newest first
    assert re.search(r"Page 1 of 2 · \d+ entries", first)
    second = client.get(reverse("audit:list") + "?page=2").content.decode()
    assert "app:0<" in second
    assert client.get(reverse("audit:list") + "?page=999").status_code == 200  # the last page
    assert client.get(reverse("audit:list") + "?page=x").status_code == 200

    deletes = client.get(reverse("audit:list") + "?team=a&action=image.delete").content.decode()
    assert re.findall(r'data-action="([^"]+)"', deletes) == ["image.delete"]
    group = client.get(reverse("audit:list") + "?action=member").content.decode()
    assert re.findall(r'data-action="([^"]+)"', group) == ["member.remove", "member.add"]
    fragment = client.get(reverse("audit:list") + "?action=image.delete", HTTP_HX_REQUEST="true")
    assert fragment.content.decode().startswith('<div id="audit-table">')

    staff = signed_in(Client(), world, "staff").get(reverse("audit:list") + "?action=image.pull")
    assert "b/secret" in staff.content.decode()


@pytest.mark.parametrize(
    "query", ["action=DROP%20TABLE", "action=" + "a" * 65, "team=b", "team=zz"]
)
def test_a_hostile_audit_filter_is_a_400(client: Client, world: World, query: str) -> None:
    audit(actor=world.users["other"], action="image.pull", team=world.b, target="b/secret:1")
    response = signed_in(client, world, "owner").get(reverse("audit:list") + "?" + query)
    assert response.status_code == 400
    text = response.content.decode()
    assert 'class="error"' in text
    assert "b/secret" not in text


def test_the_admin_shows_the_audit_log_read_only(admin_client: Client, world: World) -> None:
    entry = audit(actor=world.users["owner"], action="member.add", team=world.a, target="x")
    base = "/admin/accounts/auditentry/"
    assert admin_client.get(base).status_code == 200
    assert admin_client.get(f"{base}{entry.pk}/change/").status_code == 200  # a view page
    assert admin_client.get(f"{base}add/").status_code == 403
    changed = admin_client.post(f"{base}{entry.pk}/change/", {"action": "nothing", "target": "y"})
    assert changed.status_code == 403
    assert admin_client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = admin_client.post(base, {"action": "delete_selected", "_selected_action": [entry.pk]})
    assert bulk.status_code in (200, 302)
    entry.refresh_from_db()
    assert (entry.action, entry.target) == ("member.add", "x")


# -- what sharing must not leak -------------------------------------------------------------


def _layer(name: str, unpacked: int, size: int, parent: Layer | None = None) -> Layer:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return Layer.objects.create(
        chain_id=digest,
        parent=parent,
        digest="sha256:" + hashlib.sha256(f"blob {name}".encode()).hexdigest(),
        diff_id="sha256:" + hashlib.sha256(f"diff {name}".encode()).hexdigest(),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=size,
        unpacked_size=unpacked,
        unpacked_at=timezone.now(),
    )


def _image(name: str, layers: list[Layer], tags: list[tuple[str, str]], team: Team) -> Image:
    image = Image.objects.create(
        manifest_digest="sha256:" + hashlib.sha256(f"manifest {name}".encode()).hexdigest(),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest="sha256:" + hashlib.sha256(f"config {name}".encode()).hexdigest(),
        config={},
        team=team,
    )
    # through the catalog's own writer, which keeps each layer's image count
    image_layers_add(image=image, layers=layers)
    for repository, tag in tags:
        repo, _ = Repository.objects.get_or_create(team=team, registry="r.example", name=repository)
        image.repositories.add(repo)
        Tag.objects.create(repository=repo, name=tag, image=image)
    return image


@pytest.fixture
def shared(world: World) -> dict[str, Any]:
    """One base layer under two of a's images and two of b's; b also names a's first image
    under a name of its own."""
    # b's name for a's image comes first in every order a name is picked by (registry,
    # then the repository's pk): a page that picks names among all tags would show it
    b_copy = Repository.objects.create(team=world.b, registry="a.example", name="b/copy-of-app")
    base = _layer("base", 100_000, 40_000)
    images = {
        "app": _image("app", [base, _layer("app", 1000, 500, base)], [("a/app", "1")], world.a),
        "tool": _image("tool", [base, _layer("tool", 2000, 800, base)], [("a/tool", "1")], world.a),
        "secret": _image(
            "secret", [base, _layer("secret", 3000, 900, base)], [("b/secret", "1")], world.b
        ),
        "hidden": _image(
            "hidden", [base, _layer("hidden", 4000, 700, base)], [("b/hidden", "2")], world.b
        ),
    }
    images["app"].repositories.add(b_copy)
    Tag.objects.create(repository=b_copy, name="mine", image=images["app"])
    return {"base": base, **images}


def test_an_images_layer_rows_name_only_the_users_images(
    client: Client, world: World, shared: dict[str, Any]
) -> None:
    html = (
        signed_in(client, world, "viewer")
        .get(reverse("images:detail", args=[shared["app"].pk]))
        .content.decode()
    )
    base_row = _row(html, "tr", "data-layer", shared["base"].chain_id)
    assert "a/tool:1" in base_row
    assert "shared with 1 of your images and others" in base_row
    for name in ("b/secret", "b/hidden", "copy-of-app"):
        assert name not in html
    # the sizes stay true: the base is shared, whoever shares it
    assert f'title="{shared["base"].unpacked_size} bytes"' in base_row
    # b's owner sees a's app under b's own name, and a's names nowhere
    other = (
        signed_in(Client(), world, "other")
        .get(reverse("images:detail", args=[shared["secret"].pk]))
        .content.decode()
    )
    row = _row(other, "tr", "data-layer", shared["base"].chain_id)
    assert "a.example/b/copy-of-app:mine" in row
    assert "b/hidden:2" in row
    assert "a/app" not in other
    assert "a/tool" not in other
    assert "shared with 2 of your images and others" in row
    # staff see every image: nobody is "others"
    staff = (
        signed_in(Client(), world, "staff")
        .get(reverse("images:detail", args=[shared["app"].pk]))
        .content.decode()
    )
    assert "and others" not in staff
    assert "b/secret:1" in _row(staff, "tr", "data-layer", shared["base"].chain_id)


def test_the_layer_page_counts_every_image_and_names_only_the_users(
    client: Client, world: World, shared: dict[str, Any]
) -> None:
    base_hex = shared["base"].chain_id.removeprefix("sha256:")
    html = (
        signed_in(client, world, "viewer")
        .get(reverse("layers:detail", args=[base_hex]))
        .content.decode()
    )
    assert _figure(html, "users") == "4 images"
    assert "shared with 2 of your images and others" in html
    assert "a/app:1" in html
    assert "a/tool:1" in html
    for name in ("b/secret", "b/hidden", "copy-of-app"):
        assert name not in html
    # a layer only b's images use does not open for a
    hidden_hex = (
        shared["hidden"].image_layers.get(position=1).layer.chain_id.removeprefix("sha256:")
    )
    assert client.get(reverse("layers:detail", args=[hidden_hex])).status_code == 404


def test_the_containers_list_names_images_from_the_users_repositories(
    client: Client, world: World, shared: dict[str, Any]
) -> None:
    Container.objects.create(container_id="c" * 64, name="work", image=shared["app"], team=world.a)
    html = signed_in(client, world, "viewer").get(reverse("containers:list")).content.decode()
    assert "r.example/a/app:1" in html
    assert "copy-of-app" not in html


def test_the_overview_keeps_store_totals_for_staff(
    client: Client, world: World, shared: dict[str, Any]
) -> None:
    html = signed_in(client, world, "viewer").get(reverse("dashboard:home")).content.decode()
    for figure in ("physical_bytes", "savings_bytes", "logical_bytes", "tmp_bytes", "layers"):
        assert f'data-figure="{figure}"' not in html
    assert _figure(html, "images") == "2"  # a's two, not the store's four
    usage = team_usage(world.a)
    row = html.split('data-team="a"', 1)[1].split("</section>", 1)[0]
    assert f'title="{usage.logical_bytes} bytes"' in row
    assert f'title="{usage.shared_bytes} bytes"' in row
    # a's images' base layer and its blob, each counted for both images that use it
    assert usage.shared_bytes == 2 * (100_000 + 40_000)
    assert 'data-team="b"' not in html
    for name in ("b/secret", "b/hidden", "copy-of-app"):
        assert name not in html

    staff = signed_in(Client(), world, "staff").get(reverse("dashboard:home")).content.decode()
    for figure in ("physical_bytes", "savings_bytes", "logical_bytes", "tmp_bytes"):
        assert f'data-figure="{figure}"' in staff
    assert _figure(staff, "images") == "4"


def test_a_team_usage_is_its_logical_total_and_the_part_in_shared_layers(
    world: World, shared: dict[str, Any]
) -> None:
    usage = team_usage(world.b)
    # b names a's app too: its images are secret, hidden and app
    own = [(100_000 + 40_000) + u + s for u, s in ((3000, 900), (4000, 700), (1000, 500))]
    assert usage.logical_bytes == sum(own)
    assert usage.shared_bytes == 3 * (100_000 + 40_000)
    assert usage.quota_bytes is None
    assert 0 < usage.shared_percent < 100


# -- helpers ---------------------------------------------------------------------------------


def _figure(html: str, name: str) -> str:
    found = re.search(rf'data-figure="{name}"[^>]*>([^<]*)<', html)
    assert found is not None, name
    return found.group(1).strip()


def _row(html: str, tag: str, attribute: str, value: str) -> str:
    """The element ``<tag attribute="value" ...>`` with its content (not nested alike)."""
    found = re.search(
        rf'<{tag}[^>]*{attribute}="{re.escape(value)}"[^>]*>(.*?)</{tag}>', html, re.S
    )
    assert found is not None, f"{tag} {attribute}={value}"
    return found.group(0)


def test_every_accounts_page_needs_a_signed_in_user(client: Client) -> None:
    for name in ("teams:list", "tokens:list", "audit:list"):
        response = client.get(reverse(name))
        assert response.status_code == 302
        assert response["Location"] == f"{reverse('login')}?next={reverse(name)}"


def test_pages_of_teams_ignore_hostile_addresses(client: Client, world: World) -> None:
    client = signed_in(client, world, "owner")
    for address in (
        "/teams/%00/",
        "/teams/" + "x" * 300 + "/",
        "/teams/a/members/99999/remove/",
        "/teams/a/tokens/99999/revoke/",
        "/tokens/99999/revoke/",
        "/tokens/99999999999999999999999999/revoke/",
        "/teams/a/logins/99999/delete/",
    ):
        method = client.post if address.endswith(("remove/", "revoke/", "delete/")) else client.get
        assert method(address).status_code == 404, address
