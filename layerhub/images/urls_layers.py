"""Routes of the layer pages and the file browsers (a layer's own changes, an image's files)."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.images import views_layers

app_name = "layers"

urlpatterns: list[URLPattern] = [
    path("<str:chain_hex>/", views_layers.layer_detail, name="detail"),
    path("image/<int:pk>/files/", views_layers.image_files, name="image_files"),
]
