"""Routes of the dashboard pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.core.views_placeholder import not_built
from layerhub.dashboard import views

app_name = "dashboard"

urlpatterns: list[URLPattern] = [
    path("", views.home, name="home"),
    path("sharing/", not_built, name="sharing"),
]
