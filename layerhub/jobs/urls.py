"""Routes of the jobs pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.core.views_placeholder import not_built

app_name = "jobs"

urlpatterns: list[URLPattern] = [
    path("", not_built, name="list"),
    path("<int:pk>/", not_built, name="detail"),
    path("pull/", not_built, name="pull"),
    path("import/", not_built, name="import"),
]
