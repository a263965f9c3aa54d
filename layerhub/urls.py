"""Top-level URL routes: each app's pages under its own namespace."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import URLPattern, URLResolver, include, path

from layerhub.core.views import healthz

urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("layerhub.dashboard.urls")),
    path("images/", include("layerhub.images.urls")),
    path("layers/", include("layerhub.images.urls_layers")),
    path("containers/", include("layerhub.containers.urls")),
    path("jobs/", include("layerhub.jobs.urls")),
    path("teams/", include("layerhub.accounts.urls")),
    path("tokens/", include("layerhub.accounts.urls_tokens")),
    path("audit/", include("layerhub.accounts.urls_audit")),
    path("api/", include("layerhub.api.urls")),
    path("healthz", login_not_required(healthz), name="healthz"),
    path(
        "login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
]
