"""Routes of the containers pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.core.views_placeholder import not_built

app_name = "containers"

urlpatterns: list[URLPattern] = [
    path("", not_built, name="list"),
]
