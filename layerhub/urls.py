"""Top-level URL routes."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path

from layerhub.core.views import healthz

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("layerhub.dashboard.urls")),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
