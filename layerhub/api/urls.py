"""The API's routes: ``/api/v1/...``, the schema at ``/api/schema/`` and its docs pages.

Every route answers a signed-in user only (a session or a token): DRF checks (its views are
exempt from Django's LoginRequiredMiddleware, which would send a token's request to the sign-in
page). The docs pages are for browsers: they send an anonymous visitor to sign in.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.urls import URLPattern, URLResolver, include, path, re_path
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularSwaggerView,
)
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.routers import DefaultRouter

from layerhub.api.base import LayerhubAPIView
from layerhub.api.views.accounts import (
    AuditViewSet,
    RegistryLoginViewSet,
    TeamViewSet,
    TokenViewSet,
)
from layerhub.api.views.catalog import RepositoryViewSet, TagViewSet
from layerhub.api.views.containers import ContainerViewSet
from layerhub.api.views.file_search import FileViewSet
from layerhub.api.views.images import ImageViewSet
from layerhub.api.views.jobs import JobViewSet
from layerhub.api.views.layers import LayerViewSet
from layerhub.api.views.packages import PackageViewSet
from layerhub.api.views.system import DfView, SearchView

app_name = "api"


class NotFoundView(LayerhubAPIView):
    """Any other address under /api/: a JSON 404 (once signed in)."""

    schema = None  # not an operation of the API

    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        raise NotFound("no such API endpoint: see /api/docs/")

    post = put = patch = delete = get


router = DefaultRouter()
router.include_format_suffixes = False
router.register("images", ImageViewSet, basename="image")
router.register("layers", LayerViewSet, basename="layer")
router.register("packages", PackageViewSet, basename="package")
router.register("files", FileViewSet, basename="file")
router.register("repositories", RepositoryViewSet, basename="repository")
router.register("tags", TagViewSet, basename="tag")
router.register("containers", ContainerViewSet, basename="container")
router.register("jobs", JobViewSet, basename="job")
router.register("teams", TeamViewSet, basename="team")
router.register("tokens", TokenViewSet, basename="token")
router.register("registry-logins", RegistryLoginViewSet, basename="registry-login")
router.register("audit", AuditViewSet, basename="audit")


urlpatterns: list[URLPattern | URLResolver] = [
    path("v1/system/df/", DfView.as_view(), name="df"),
    path("v1/search/", SearchView.as_view(), name="search"),
    path("v1/", include(router.urls)),
    path("schema/", SpectacularJSONAPIView.as_view(), name="schema"),
    # a page for people in a browser: Django's sign-in redirect rather than a 401 (Swagger UI
    # only: drf-spectacular's Redoc page loads its fonts from Google)
    path(
        "docs/",
        login_required(SpectacularSwaggerView.as_view(url_name="api:schema")),
        name="docs",
    ),
    re_path(r"^.*$", NotFoundView.as_view(), name="not-found"),
]
