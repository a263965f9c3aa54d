"""Routes of the personal tokens page."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.accounts.views import tokens

app_name = "tokens"

urlpatterns: list[URLPattern] = [
    path("", tokens.personal_tokens, name="list"),
    path("<int:pk>/revoke/", tokens.personal_token_revoke, name="revoke"),
]
