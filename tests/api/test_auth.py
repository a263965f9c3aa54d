"""Signing in to the API: tokens (Bearer and Token), sessions with CSRF, revocation, scopes,
and the one error shape."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from layerhub.accounts.models import Token
from layerhub.accounts.services import token_create, token_revoke
from tests.api.conftest import World, bearer, token_client

pytestmark = pytest.mark.django_db


def test_nothing_answers_without_credentials(world: World) -> None:
    client = APIClient()
    for url in ("/api/v1/", "/api/v1/images/", "/api/schema/", "/api/v1/nowhere/"):
        response = client.get(url)
        assert response.status_code == 401, url
        assert response["WWW-Authenticate"] == 'Bearer realm="layerhub"'
        assert response.json()["error"]["code"] == "not_authenticated"
    assert client.get("/healthz").status_code in (200, 503)


def test_the_docs_page_sends_a_browser_to_sign_in(world: World) -> None:
    response = Client().get("/api/docs/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/api/docs/")


@pytest.mark.parametrize("keyword", ["Bearer", "Token", "bearer"])
def test_a_token_signs_in_as_its_user(world: World, keyword: str) -> None:
    _, secret = token_create(name="laptop", actor=world.users["viewer"], scope=Token.Scope.READ)
    response = bearer(secret, keyword).get("/api/v1/teams/")
    assert response.status_code == 200
    assert [(t["name"], t["role"]) for t in response.json()["results"]] == [("alpha", "viewer")]
    assert Token.objects.get(name="laptop").last_used_at is not None


@pytest.mark.parametrize(
    "header",
    ["Bearer lh_nope", "Bearer", "Bearer a b", "Token " + "x" * 300, "Bearer l\u00e9"],
)
def test_a_bad_token_is_refused(world: World, header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/images/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_a_revoked_token_is_refused_at_once(world: World) -> None:
    token, secret = token_create(name="ci", actor=world.users["developer"])
    client = bearer(secret)
    assert client.get("/api/v1/images/").status_code == 200
    token_revoke(token=token, actor=world.users["developer"])
    response = client.get("/api/v1/images/")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "invalid or revoked token"


def test_revoking_over_the_api_refuses_the_next_request(world: World) -> None:
    token, secret = token_create(
        name="ci", actor=world.users["developer"], scope=Token.Scope.READ_WRITE
    )
    client = bearer(secret)
    assert client.delete(f"/api/v1/tokens/{token.pk}/").status_code == 204
    assert client.get("/api/v1/images/").status_code == 401


def test_a_session_signs_in_and_writes_need_csrf(world: World) -> None:
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="developer", password="a long passphrase")
    assert client.get("/api/v1/images/").status_code == 200
    body = {"path": "/tmp-file", "content": "hi"}
    refused = client.post(f"/api/v1/containers/{world.container.name}/files/", body, format="json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    client.get("/")  # a page with a form sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    done = client.post(
        f"/api/v1/containers/{world.container.name}/files/",
        body,
        format="json",
        HTTP_X_CSRFTOKEN=csrf,
    )
    assert done.status_code == 201, done.content
    assert done.json()["size"] == 2


def test_a_read_token_acts_as_a_viewer(world: World) -> None:
    client = token_client(world.users["owner"], scope=Token.Scope.READ)
    assert client.get(f"/api/v1/images/{world.app.pk}/").status_code == 200
    response = client.delete(f"/api/v1/tags/{world.app_tag.pk}/")
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "permission_denied",
        "message": "this token's scope does not allow it (needs maintainer)",
    }
    made = client.post("/api/v1/tokens/", {"name": "escalate", "scope": "read-write"})
    assert made.status_code == 403
    assert not Token.objects.filter(name="escalate").exists()


def test_unknown_addresses_are_json_404s(world: World) -> None:
    client = token_client(world.users["viewer"])
    for url in ("/api/v1/nowhere/", "/api/v2/", f"/api/v1/images/{10**30}/"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"


def test_errors_have_one_shape(world: World) -> None:
    client = token_client(world.users["developer"])
    invalid = client.post("/api/v1/containers/", {"image": "x", "name": "a b"}, format="json")
    assert invalid.status_code == 400
    error = invalid.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"].startswith("image: ")
    assert set(error["fields"]) == {"image"}
    bad_json = client.generic("POST", "/api/v1/images/pull/", "{", "application/json")
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["code"] == "parse_error"
    nested = client.generic("POST", "/api/v1/images/pull/", "[" * 100_000, "application/json")
    assert nested.status_code == 400
    wrong_type = client.generic("POST", "/api/v1/images/pull/", "x", "text/plain")
    assert wrong_type.status_code == 415
    assert wrong_type.json()["error"]["code"] == "unsupported_media_type"
    not_allowed = client.put("/api/v1/images/", {})
    assert not_allowed.status_code == 405
    assert not_allowed.json()["error"]["code"] == "method_not_allowed"
    layerhub_error = client.get(f"/api/v1/images/{world.app.pk}/files/", {"path": "/../etc"})
    assert layerhub_error.status_code == 400
    assert layerhub_error.json()["error"]["code"] == "invalid_path"
    assert client.get("/api/v1/images/", HTTP_ACCEPT="text/html").status_code == 200


def test_a_body_past_the_caps_is_refused(world: World) -> None:
    client = token_client(world.users["developer"])
    body = '{"reference": "' + "a" * (3 * 1024 * 1024) + '"}'
    response = client.generic("POST", "/api/v1/images/pull/", body, "application/json")
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"
    fields = {f"f{n}": "1" for n in range(1200)}  # past DATA_UPLOAD_MAX_NUMBER_FIELDS
    url = f"/api/v1/containers/{world.container.name}/files/upload/"
    many = client.post(url, fields, format="multipart")
    assert many.status_code == 400
    assert many.json()["error"]["code"] == "parse_error"
