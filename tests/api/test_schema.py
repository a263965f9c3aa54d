"""The OpenAPI schema generates without warnings, documents the error shape on every
operation, and its docs page loads its assets from this site, never a CDN."""

from __future__ import annotations

import io
import re

import pytest
from django.core.management import call_command
from django.test import Client

from tests.api.conftest import World, token_client

pytestmark = pytest.mark.django_db


def test_the_schema_generates_and_validates_without_warnings() -> None:
    out, err = io.StringIO(), io.StringIO()
    # --fail-on-warn raises on any warning (a guessed type, an enum name collision...)
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=out, stderr=err)
    assert "openapi: 3" in out.getvalue()
    assert "Warning" not in err.getvalue()


def test_every_operation_documents_the_error_shape(world: World) -> None:
    schema = token_client(world.users["viewer"]).get("/api/schema/").json()
    assert schema["components"]["schemas"]["Error"]["required"] == ["error"]
    operations = [
        (path, method, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    assert len(operations) > 40
    for path, method, operation in operations:
        for status in ("400", "401", "403", "404"):
            ref = operation["responses"][status]["content"]["application/json"]["schema"]
            assert ref == {"$ref": "#/components/schemas/Error"}, (path, method, status)
        assert {"tokenAuth": []} in operation["security"], (path, method)


def test_the_docs_page_uses_no_cdn(world: World) -> None:
    client = Client()
    client.force_login(world.users["viewer"])
    response = client.get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources, html[:500]
    for source in sources:
        assert source.startswith("/"), source
        assert not source.startswith("//"), source
    assert "/static/drf_spectacular_sidecar/" in html
    assert "/api/schema/" in html
    # the page's own script turns swagger.io's online validator off
    assert '"validatorUrl": null' in html
