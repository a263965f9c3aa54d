"""Routes of the layer pages and the file browsers (a layer's own changes, an image's files)."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.core.views_placeholder import not_built

app_name = "layers"

urlpatterns: list[URLPattern] = [
    path("<str:chain_hex>/", not_built, name="detail"),
    path("image/<int:pk>/files/", not_built, name="image_files"),
]
