"""Routes of the jobs pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.jobs import views

app_name = "jobs"

urlpatterns: list[URLPattern] = [
    path("", views.job_list, name="list"),
    path("<int:pk>/", views.job_detail, name="detail"),
    path("<int:pk>/cancel/", views.job_cancel_view, name="cancel"),
    path("<int:pk>/download/", views.job_download, name="download"),
    path("pull/", views.job_pull, name="pull"),
    path("push/", views.job_push, name="push"),
    path("import/", views.job_import, name="import"),
]
