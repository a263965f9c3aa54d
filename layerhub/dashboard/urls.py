"""Routes of the dashboard pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.dashboard import duplicates, sharing, views

app_name = "dashboard"

urlpatterns: list[URLPattern] = [
    path("", views.home, name="home"),
    path("sharing/", sharing.sharing_page, name="sharing"),
    path("verify/", views.store_verify_view, name="verify"),
    path("gc/", views.store_gc_view, name="gc"),
    path("duplicates/", duplicates.duplicates_page, name="duplicates"),
    path("dedup/", duplicates.store_dedup_view, name="dedup"),
]
