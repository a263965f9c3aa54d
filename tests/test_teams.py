"""Teams, roles and tokens: the one permission module, team isolation in the catalog, the
CLI acting for a user and a team, quotas and the audit log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from layerhub.accounts.models import AuditEntry, Membership, Role, Team, Token
from layerhub.accounts.services import token_authenticate, token_create, token_revoke
from layerhub.core.permissions import (
    ADMIN,
    CHANGE,
    DELETE,
    MANAGE,
    PULL,
    SCOPE_ATTRIBUTE,
    VIEW,
    can,
    restrict,
    scope_cap,
    team_choose,
)
from layerhub.engine.digest import sha256_bytes as sha256_digest
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, RegistryCredential, Repository, Tag
from layerhub.images.services import registry_client_for, tag_add, tag_remove
from layerhub.images.services.transfer import image_remove

pytestmark = pytest.mark.django_db

# what each role may do, one row per action: the whole rule in one table
MATRIX = {
    VIEW: {"viewer", "developer", "maintainer", "owner"},
    PULL: {"viewer", "developer", "maintainer", "owner"},
    CHANGE: {"developer", "maintainer", "owner"},
    DELETE: {"maintainer", "owner"},
    MANAGE: {"maintainer", "owner"},
    ADMIN: {"owner"},
}


def _image(name: str, repositories: list[Repository], tag: str = "1") -> Image:
    image = Image.objects.create(
        manifest_digest=sha256_digest(f"manifest {name}".encode()),
        media_type="application/vnd.oci.image.manifest.v1+json",
        config_digest=sha256_digest(f"config {name}".encode()),
        config={},
    )
    for repository in repositories:
        image.repositories.add(repository)
        Tag.objects.create(repository=repository, name=tag, image=image)
    return image


@pytest.fixture
def world(django_user_model: type[User]) -> dict[str, Any]:
    """Two teams, a user of each role in team a, one user of team b, a staff user and a
    user in no team; a private image of each team, one shared base both teams name."""
    a = Team.objects.create(name="a")
    b = Team.objects.create(name="b")
    users: dict[str, Any] = {}
    for role in Role:
        users[role.value] = django_user_model.objects.create_user(f"a-{role.value}")
        Membership.objects.create(team=a, user=users[role.value], role=role)
    users["other"] = django_user_model.objects.create_user("b-owner")
    Membership.objects.create(team=b, user=users["other"], role=Role.OWNER)
    users["staff"] = django_user_model.objects.create_user("staff", is_staff=True)
    users["nobody"] = django_user_model.objects.create_user("nobody")
    repo_a = Repository.objects.create(team=a, registry="r.example", name="a/app")
    repo_b = Repository.objects.create(team=b, registry="r.example", name="b/secret")
    base_a = Repository.objects.create(team=a, registry="docker.io", name="library/debian")
    base_b = Repository.objects.create(team=b, registry="docker.io", name="library/debian")
    return {
        "a": a,
        "b": b,
        "users": users,
        "image_a": _image("a", [repo_a]),
        "image_b": _image("b", [repo_b]),
        "base": _image("base", [base_a, base_b], tag="12"),
    }


@pytest.mark.parametrize("action", list(MATRIX))
@pytest.mark.parametrize("who", ["viewer", "developer", "maintainer", "owner", "other", "staff"])
def test_the_role_table_decides_every_action(world: dict[str, Any], who: str, action: str) -> None:
    user = world["users"][who]
    expected = who == "staff" or who in MATRIX[action]
    assert can(user, action, world["a"]) is expected
    # the team of another: only its own member (and staff) act there
    assert can(user, action, world["b"]) is (who in ("other", "staff"))


def test_anonymous_and_teamless_users_see_nothing_private(world: dict[str, Any]) -> None:
    for user in (None, world["users"]["nobody"]):
        assert not restrict(Image.objects.all(), user).exists()
        assert not restrict(Repository.objects.all(), user).exists()


def test_a_public_repository_is_visible_to_every_signed_in_user(world: dict[str, Any]) -> None:
    nobody = world["users"]["nobody"]
    Repository.objects.filter(name="a/app").update(public=True)
    assert list(restrict(Image.objects.all(), nobody)) == [world["image_a"]]
    assert not can(nobody, PULL, world["a"])  # visible is not writable


def test_a_team_sees_its_images_and_the_shared_base_but_not_the_other_teams(
    world: dict[str, Any],
) -> None:
    viewer = world["users"]["viewer"]
    visible = set(restrict(Image.objects.all(), viewer))
    assert visible == {world["image_a"], world["base"]}
    # the shared base's names: only team a's repository, never team b's
    assert {t.repository.team.name for t in restrict(world["base"].tags.all(), viewer)} == {"a"}
    with pytest.raises(Exception, match="no such image"):
        image_lookup("r.example/b/secret:1", user=viewer)


def test_deleting_a_shared_image_takes_only_the_teams_names(world: dict[str, Any]) -> None:
    maintainer = world["users"]["maintainer"]
    base = world["base"]
    lines = image_remove(image=base.manifest_digest, force=True, user=maintainer)
    assert lines == ["Untagged: docker.io/library/debian:12"]
    assert Image.objects.filter(pk=base.pk).exists()  # team b still names it
    assert [t.repository.team.name for t in base.tags.all()] == ["b"]
    # a developer may not delete, and team b's image is not even found
    with pytest.raises(PermissionDenied):
        image_remove(image=world["image_a"].manifest_digest, user=world["users"]["developer"])
    with pytest.raises(Exception, match="no such image"):
        image_remove(image=world["image_b"].manifest_digest, user=maintainer)


def test_a_pull_uses_its_own_teams_registry_login_only(world: dict[str, Any]) -> None:
    login = RegistryCredential(team=world["b"], host="r.example", username="b-robot")
    login.set_password("b-secret")
    login.save()
    client = registry_client_for(registry="r.example", team=world["a"])
    try:
        assert client.credentials is None
    finally:
        client.close()
    client = registry_client_for(registry="r.example", team=world["b"])
    try:
        assert client.credentials is not None
        assert client.credentials.username == "b-robot"
    finally:
        client.close()


def test_tag_and_untag_need_their_roles_and_are_audited(world: dict[str, Any]) -> None:
    users, a = world["users"], world["a"]
    with pytest.raises(PermissionDenied):
        tag_add(image=world["image_a"], reference="r.example/a/app:2", team=a, user=users["viewer"])
    tag = tag_add(
        image=world["image_a"], reference="r.example/a/app:2", team=a, user=users["developer"]
    )
    with pytest.raises(PermissionDenied):
        tag_remove(tag=tag, user=users["developer"])
    tag_remove(tag=tag, user=users["maintainer"])
    actions = list(AuditEntry.objects.filter(team=a).values_list("action", "actor_name"))
    assert ("tag.create", "a-developer") in actions
    assert ("tag.delete", "a-maintainer") in actions
    # the audit log is the owner's to read, not the maintainer's
    assert restrict(AuditEntry.objects.all(), users["owner"]).count() == 2
    assert not restrict(AuditEntry.objects.all(), users["maintainer"]).exists()


def test_team_choice_for_a_user_of_one_team_and_of_two(world: dict[str, Any]) -> None:
    viewer = world["users"]["viewer"]
    assert team_choose(viewer, None, VIEW) == world["a"]
    Membership.objects.create(team=world["b"], user=viewer, role=Role.VIEWER)
    with pytest.raises(PermissionDenied, match="choose a team with --team: a, b"):
        team_choose(viewer, None, VIEW)
    assert team_choose(viewer, "b", VIEW) == world["b"]
    with pytest.raises(PermissionDenied, match="developer role in team b"):
        team_choose(viewer, "b", CHANGE)
    with pytest.raises(PermissionDenied, match="no such team: zz"):
        team_choose(viewer, "zz", VIEW)


def test_tokens_are_hashed_capped_by_scope_and_revoked_at_once(world: dict[str, Any]) -> None:
    owner = world["users"]["owner"]
    token, secret = token_create(name="ci", actor=owner, scope="read", team=world["a"])
    assert secret not in token.key_hash
    assert secret.startswith("lh_")
    found = token_authenticate(secret)
    assert found is not None
    assert found.kind == Token.Kind.ROBOT
    robot = found.user
    setattr(robot, SCOPE_ATTRIBUTE, scope_cap(found).value)
    assert can(robot, PULL, world["a"])
    assert not can(robot, CHANGE, world["a"])
    assert not can(robot, VIEW, world["b"])
    # a read-scoped personal token of the owner acts as a viewer
    _personal, personal_secret = token_create(name="laptop", actor=owner, scope="read")
    me = token_authenticate(personal_secret)
    assert me is not None
    assert me.user == owner
    setattr(owner, SCOPE_ATTRIBUTE, scope_cap(me).value)
    assert not can(owner, DELETE, world["a"])
    token_revoke(token=found, actor=world["users"]["maintainer"])
    assert token_authenticate(secret) is None
    assert token_authenticate("lh_" + "x" * 40) is None


def test_cli_acts_for_user_and_team_and_tags(world: dict[str, Any]) -> None:
    call_command("tag", world["image_a"].manifest_digest, "r.example/a/app:3", user="a-developer")
    assert Tag.objects.filter(repository__team=world["a"], name="3").exists()
    with pytest.raises(CommandError, match="maintainer role in team a"):
        call_command("untag", "r.example/a/app:3", user="a-developer")
    call_command("untag", "r.example/a/app:3", user="a-maintainer")
    assert not Tag.objects.filter(repository__team=world["a"], name="3").exists()
    with pytest.raises(CommandError, match="no such user"):
        call_command("tag", "x", "r.example/a/app:4", user="ghost")
    with pytest.raises(CommandError, match="no such image"):
        call_command("tag", world["image_b"].manifest_digest, "r.example/a/x:1", user="a-owner")


def test_a_quota_refuses_an_image_that_would_pass_it(world: dict[str, Any], tmp_path: Any) -> None:
    from layerhub.engine.errors import QuotaExceeded
    from layerhub.engine.manifest import Descriptor, ImageManifest, parse_config
    from layerhub.engine.reference import parse_reference
    from layerhub.images.services.pull import StoredImage, image_record

    team = world["a"]
    team.quota_bytes = 1000
    team.save()
    rootfs = {"type": "layers", "diff_ids": [sha256_digest(b"d")]}
    raw = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs})
    config = parse_config(raw.encode())
    layer = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", sha256_digest(b"l"), 5000)
    manifest = ImageManifest(
        media_type="application/vnd.oci.image.manifest.v1+json",
        config=Descriptor("application/vnd.oci.image.config.v1+json", sha256_digest(b"c"), 10),
        layers=(layer,),
    )
    stored = StoredImage(sha256_digest(b"m"), manifest, None, sha256_digest(b"c"), config)
    with pytest.raises(QuotaExceeded, match="team a is limited to 1kB") as info:
        image_record(refs=[parse_reference("r.example/a/big:1")], resolved=stored, team=team)
    assert "would add 5kB" in str(info.value)
    assert not Image.objects.filter(manifest_digest=sha256_digest(b"m")).exists()


def test_pages_never_show_another_teams_names(world: dict[str, Any]) -> None:
    # team b's own name for the shared base must not show as a row of team a's list
    b_repo = Repository.objects.get(team=world["b"], name="library/debian")
    Tag.objects.create(repository=b_repo, name="b-only", image=world["base"])
    client = Client()
    client.force_login(world["users"]["viewer"])
    listing = client.get(reverse("images:list")).content.decode()
    assert "b-only" not in listing
    assert "a/app" in listing
    assert "debian" in listing
    assert "b/secret" not in listing
    detail = client.get(reverse("images:detail", args=[world["base"].pk])).content.decode()
    assert "b/secret" not in detail
    assert "b-only" not in detail
    assert client.get(reverse("images:detail", args=[world["image_b"].pk])).status_code == 404


def test_sharing_and_layer_pages_never_show_another_teams_names(world: dict[str, Any]) -> None:
    from layerhub.images.models import ImageLayer, Layer

    base = world["base"]
    layer = Layer.objects.create(
        chain_id=sha256_digest(b"chain"),
        digest=sha256_digest(b"blob"),
        diff_id=sha256_digest(b"chain"),
        media_type="application/vnd.oci.image.layer.v1.tar+gzip",
        size=10,
        unpacked_size=100,
    )
    for image in (base, world["image_a"], world["image_b"]):
        ImageLayer.objects.create(image=image, layer=layer, position=0)
    b_repo = Repository.objects.get(team=world["b"], name="library/debian")
    Tag.objects.create(repository=b_repo, name="b-only", image=base)
    client = Client()
    client.force_login(world["users"]["viewer"])
    for url in (
        reverse("dashboard:sharing"),
        reverse("layers:detail", args=[layer.chain_id.removeprefix("sha256:")]),
        reverse("images:detail", args=[world["image_a"].pk]),
    ):
        html = client.get(url).content.decode()
        assert "b-only" not in html, url
        assert "b/secret" not in html, url
        # the page does name images, those of the user's team
        assert "a/app" in html or url.endswith(f"/{world['image_a'].pk}/"), url


def test_a_user_who_sees_every_image_gets_them_all_and_still_no_foreign_names(
    world: dict[str, Any],
) -> None:
    other = world["users"]["other"]  # team b's owner: sees b's images and the shared base
    assert set(restrict(Image.objects.all(), other)) == {world["image_b"], world["base"]}
    # team a makes its app public: now b's owner sees every image of the catalog ...
    Repository.objects.filter(name="a/app").update(public=True)
    fresh = User.objects.get(pk=other.pk)  # a new request's user: the answer is not cached
    assert restrict(Image.objects.all(), fresh).count() == Image.objects.count()
    # ... but a tag of team a on the shared base stays team a's
    names = {t.repository.team.name for t in restrict(world["base"].tags.all(), fresh)}
    assert names == {"b"}
