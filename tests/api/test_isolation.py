"""Team isolation over the API: a user of team alpha sees, uses and deletes nothing of team
beta's, and cannot learn beta's private names from the layers the teams share."""

from __future__ import annotations

import json

import pytest

from layerhub.accounts.services import audit
from layerhub.images.models import Image, RegistryCredential, Repository, Tag
from layerhub.jobs.models import Job
from tests.api.conftest import REGISTRY, World, token_client

pytestmark = pytest.mark.django_db


def _text(response: object) -> str:
    return json.dumps(response.json())  # type: ignore[attr-defined]


def _references(response: object) -> set[str]:
    return {ref for image in response.json()["results"] for ref in image["references"]}  # type: ignore[attr-defined]


def test_lists_show_only_what_the_team_sees(world: World) -> None:
    viewer = token_client(world.users["viewer"])
    images = viewer.get("/api/v1/images/")
    assert _references(images) == {
        f"{REGISTRY}/alpha/app:1",
        f"{REGISTRY}/alpha/tool:1",
        f"{REGISTRY}/gamma/lib:1",
    }
    for url in (
        "/api/v1/images/",
        "/api/v1/repositories/",
        "/api/v1/tags/",
        "/api/v1/jobs/",
        "/api/v1/registry-logins/",
        "/api/v1/containers/",
        "/api/v1/system/df/",
        "/api/v1/teams/",
    ):
        body = _text(viewer.get(url))
        assert "beta" not in body, url
        assert "secret" not in body, url
    outsider = token_client(world.users["outsider"])
    assert _references(outsider.get("/api/v1/images/")) == {
        f"{REGISTRY}/beta/secret:1",
        f"{REGISTRY}/gamma/lib:1",
    }
    assert outsider.get("/api/v1/containers/").json()["count"] == 0
    assert outsider.get(f"/api/v1/images/{world.app.pk}/").status_code == 404


def test_a_shared_layer_names_only_your_images_and_says_others(world: World) -> None:
    base = world.app.image_layers.get(position=0).layer
    viewer = token_client(world.users["viewer"])
    layer = viewer.get(f"/api/v1/layers/{base.chain_id}/").json()
    assert layer["sharing"] == {
        "your_images": 2,
        "other_images": True,
        "text": "used by 2 of your images and others",
    }
    users = viewer.get(f"/api/v1/layers/{base.chain_id}/images/").json()
    assert users["count"] == 2
    assert {image["id"] for image in users["results"]} == {world.app.pk, world.spare.pk}
    detail = viewer.get(f"/api/v1/images/{world.app.pk}/")
    assert detail.json()["layers"][0]["layer"]["sharing"]["text"] == (
        "used by 2 of your images and others"
    )
    assert detail.json()["layers"][1]["layer"]["sharing"] == {
        "your_images": 1,
        "other_images": False,
        "text": "used by 1 of your images",
    }
    assert "beta" not in _text(detail)
    assert "secret" not in _text(detail)
    # byte figures count every image: the base is shared, whoever shares it
    assert detail.json()["shared_size"] == base.unpacked_size
    staff = token_client(world.users["staff"]).get(f"/api/v1/layers/{base.chain_id}/").json()
    assert staff["sharing"] == {
        "your_images": 3,
        "other_images": False,
        "text": "used by 3 of your images",
    }


def test_filters_and_search_never_tell_another_teams_names(world: World) -> None:
    viewer = token_client(world.users["viewer"])
    for params in (
        {"repository": f"{REGISTRY}/beta/secret"},
        {"reference": f"{REGISTRY}/beta/secret:1"},
        {"reference": f"{REGISTRY}/beta/secret@{world.secret.manifest_digest}"},
        {"team": "beta"},
        {"q": "secret"},
        {"q": world.secret.config_digest},
        {"layer": world.secret_top.digest},
    ):
        response = viewer.get("/api/v1/images/", params)
        assert response.status_code == 200, params
        assert response.json()["count"] == 0, params
    assert viewer.get("/api/v1/search/", {"q": "secret"}).json()["count"] == 0
    # the same image pulled into beta too: alpha still sees only alpha's names for it
    repository = Repository.objects.create(team=world.beta, registry=REGISTRY, name="beta/copy")
    world.app.repositories.add(repository)
    Tag.objects.create(repository=repository, name="hidden", image=world.app)
    assert viewer.get("/api/v1/images/", {"tag": "hidden"}).json()["count"] == 0
    # beta's image, pulled into alpha too: who brought it in first stays beta's to know
    mine = Repository.objects.create(team=world.alpha, registry=REGISTRY, name="alpha/mine")
    world.secret.repositories.add(mine)
    assert viewer.get("/api/v1/images/", {"team": "beta"}).json()["count"] == 0
    assert world.secret.pk in [
        image["id"] for image in viewer.get("/api/v1/images/", {"team": "alpha"}).json()["results"]
    ]
    assert viewer.get("/api/v1/search/", {"q": "copy"}).json()["count"] == 0
    detail = viewer.get(f"/api/v1/images/{world.app.pk}/")
    assert detail.json()["references"] == [f"{REGISTRY}/alpha/app:1"]
    assert detail.json()["repositories"] == [f"{REGISTRY}/alpha/app"]
    assert "beta" not in _text(detail)
    assert "hidden" not in _text(detail)


def test_nothing_of_another_team_can_be_deleted(world: World) -> None:
    owner = token_client(world.users["owner"])
    secret_tag = Tag.objects.get(image=world.secret)
    for url in (
        f"/api/v1/images/{world.secret.pk}/",
        f"/api/v1/tags/{secret_tag.pk}/",
        f"/api/v1/registry-logins/{world.beta_login.pk}/",
        "/api/v1/teams/beta/members/outsider/",
    ):
        response = owner.delete(url)
        assert response.status_code == 404, url
    assert Image.objects.filter(pk=world.secret.pk).exists()
    assert Tag.objects.filter(pk=secret_tag.pk).exists()
    assert RegistryCredential.objects.filter(pk=world.beta_login.pk).exists()
    # an image beta names too is not alpha's alone to delete: alpha's names of it go
    repository = Repository.objects.create(team=world.beta, registry=REGISTRY, name="beta/copy")
    world.spare.repositories.add(repository)
    plan = owner.get(f"/api/v1/images/{world.spare.pk}/delete-plan/").json()
    assert plan["image_stays"] is True
    assert plan["frees_bytes"] == 0
    assert plan["untagged"] == [f"{REGISTRY}/alpha/tool:1"]
    deleted = owner.delete(f"/api/v1/images/{world.spare.pk}/")
    assert deleted.status_code == 200, deleted.content
    assert deleted.json() == {
        "untagged": [f"{REGISTRY}/alpha/tool:1"],
        "deleted": [],
        "freed_bytes": 0,
    }
    assert list(world.spare.repositories.all()) == [repository]
    # alpha brought it in, so still sees it (as the image page does), by none of beta's names
    left = owner.get(f"/api/v1/images/{world.spare.pk}/").json()
    assert (left["references"], left["repositories"]) == ([], [])
    assert token_client(world.users["outsider"]).get(f"/api/v1/images/{world.spare.pk}/").json()[
        "repositories"
    ] == [f"{REGISTRY}/beta/copy"]


def test_another_teams_registry_login_cannot_be_used(world: World) -> None:
    developer = token_client(world.users["developer"])
    for body in (
        {"reference": f"{REGISTRY}/beta/secret:1", "team": "beta"},
        {"reference": f"{REGISTRY}/beta/secret:1", "team": "gamma"},
    ):
        response = developer.post("/api/v1/images/pull/", body)
        assert response.status_code == 403
        assert response.json()["error"]["message"] == f"no such team: {body['team']}"
    push = developer.post(
        f"/api/v1/images/{world.app.pk}/push/",
        {"reference": f"{REGISTRY}/beta/secret:2", "team": "beta"},
    )
    assert push.status_code == 403
    login = developer.post(
        "/api/v1/registry-logins/",
        {"team": "beta", "host": REGISTRY, "username": "x", "password": "y"},
    )
    assert login.status_code == 403
    assert not Job.objects.exclude(pk=world.job.pk).exists()
    logins = developer.get("/api/v1/registry-logins/").json()["results"]
    assert [(login["team"], login["username"]) for login in logins] == [("alpha", "alpha-bot")]
    assert "password" not in _text(developer.get(f"/api/v1/registry-logins/{world.login.pk}/"))


def test_store_totals_are_for_staff_and_teams_see_their_own(world: World) -> None:
    viewer = token_client(world.users["viewer"]).get("/api/v1/system/df/").json()
    assert viewer["store"] is None
    assert viewer["totals"]["images"] == 3  # app, tool and the public lib
    assert viewer["count"] == 3
    staff = token_client(world.users["staff"]).get("/api/v1/system/df/").json()
    assert staff["totals"]["images"] == 4
    assert staff["store"]["logical_bytes"] == staff["totals"]["logical_bytes"]
    assert staff["store"]["savings_bytes"] > 0
    assert viewer["totals"]["logical_bytes"] < staff["totals"]["logical_bytes"]


def test_the_audit_log_is_for_owners_of_the_team(world: World) -> None:
    audit(actor=world.users["outsider"], action="image.pull", team=world.beta, target="beta/x")
    owner = token_client(world.users["owner"]).get("/api/v1/audit/").json()
    assert {entry["team"] for entry in owner["results"]} == {"alpha"}
    assert any(entry["action"] == "token.create" for entry in owner["results"])
    assert token_client(world.users["maintainer"]).get("/api/v1/audit/").json()["count"] == 0
    staff = token_client(world.users["staff"]).get("/api/v1/audit/", {"team": "beta"}).json()
    assert [entry["target"] for entry in staff["results"]] == ["beta/x"]
