"""Token authentication: ``Authorization: Bearer <token>`` (or ``Token <token>``).

A token acts as its user (a personal token) or as its team's robot user, and its scope caps
what it may do: the request's user carries the cap (``SCOPE_ATTRIBUTE``) that
``layerhub.core.permissions`` reads, so a read token acts as a viewer whatever its user's roles.
A revoked token is refused on its very next request (each request looks the token up).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from layerhub.accounts.models import Token
from layerhub.accounts.services import token_authenticate
from layerhub.core.permissions import SCOPE_ATTRIBUTE, scope_cap

KEYWORDS = (b"bearer", b"token")


class BearerTokenAuthentication(BaseAuthentication):
    """``Authorization: Bearer <token>`` or ``Token <token>``; any other scheme is left to
    the next authentication (the session)."""

    def authenticate(self, request: Request) -> tuple[Any, Token] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in KEYWORDS:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed(
                "malformed Authorization header: give 'Bearer <token>' with no spaces in the token"
            )
        try:
            secret = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("invalid or revoked token") from None
        token = token_authenticate(secret)
        if token is None:
            raise AuthenticationFailed("invalid or revoked token")
        user = token.user
        setattr(user, SCOPE_ATTRIBUTE, scope_cap(token).value)
        return user, token

    def authenticate_header(self, request: Request) -> str:
        # a 401 (not a 403) for a request without credentials, saying what to send
        return 'Bearer realm="layerhub"'


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """How the schema documents the token: HTTP bearer."""

    target_class = BearerTokenAuthentication
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "a personal or robot token: `Authorization: Bearer lh_...` "
            "(`Token lh_...` works too)",
        }
