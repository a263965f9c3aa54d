"""schemathesis against the API's own OpenAPI schema, in-process through the WSGI app with a
staff token: for every operation a bounded number of generated requests (valid and not), none
of which may give a 500, and every answer must match the schema (status, content type, body).

Set LAYERHUB_SCHEMATHESIS_EXAMPLES to try more requests per operation (default 20)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from pytest_django import Settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from layerhub.accounts.models import Token
from layerhub.accounts.services import token_create
from layerhub.wsgi import application
from tests.api.conftest import World

EXAMPLES = int(os.environ.get("LAYERHUB_SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def api_token(world: World) -> tuple[int, str]:
    """A staff member's read-write token (id, secret): every operation is reachable."""
    token, secret = token_create(
        name="schemathesis", actor=world.users["staff"], scope=Token.Scope.READ_WRITE
    )
    return token.pk, secret


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """A registry login the fuzzer asks for goes nowhere: names other than loopback do not
    resolve, and a registry gets one short try."""
    real = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host) not in LOOPBACK:
            raise socket.gaierror(socket.EAI_NONAME, "no network in this test")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    settings.LAYERHUB_REGISTRY_RETRIES = 0
    settings.LAYERHUB_REGISTRY_TIMEOUT = 1.0
    settings.LAYERHUB_REGISTRY_DEADLINE = 2.0


@pytest.fixture
def in_process() -> Iterator[None]:
    """The WSGI app in this test's database transaction: as Django's test client does, its
    requests leave the connection open (a request's end would close it)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def _schema() -> Any:
    """The schema /api/schema/ serves (generated here: loading it needs no database), its
    requests sent to the WSGI app in-process."""
    generator = SchemaGenerator()  # type: ignore[no-untyped-call]
    document = generator.get_schema(request=None, public=True)  # type: ignore[no-untyped-call]
    loaded = schemathesis.openapi.from_dict(document)
    loaded.app = application
    return loaded


schema = _schema()


@pytest.mark.django_db
@pytest.mark.usefixtures("no_network", "in_process")
@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case: Any, api_token: tuple[int, str]) -> None:
    token_id, secret = api_token
    if case.path == "/api/v1/tokens/{id}/" and str(case.path_parameters.get("id")) == str(token_id):
        return  # revoking the fuzzer's own token would leave it nothing to test
    case.call_and_validate(headers={"Authorization": f"Bearer {secret}"}, checks=CHECKS)
