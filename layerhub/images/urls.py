"""Routes of the images pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.core.views_placeholder import not_built

app_name = "images"

urlpatterns: list[URLPattern] = [
    path("", not_built, name="list"),
    path("<int:pk>/", not_built, name="detail"),
]
