"""Routes of the audit log page."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.accounts.views import audit

app_name = "audit"

urlpatterns: list[URLPattern] = [
    path("", audit.audit_log, name="list"),
]
