"""Routes of the containers pages. A container is named in the URL by its name, full ID or ID
prefix, as ``docker`` commands accept it."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.containers import views

app_name = "containers"

urlpatterns: list[URLPattern] = [
    path("", views.container_list, name="list"),
    # container names start with a letter or digit, so "-/" never shadows one
    path("-/create/", views.create, name="create"),
    path("<str:ref>/", views.detail, name="detail"),
    path("<str:ref>/file/", views.file_page, name="file"),
    path("<str:ref>/write/", views.write_file, name="write"),
    path("<str:ref>/upload/", views.upload, name="upload"),
    path("<str:ref>/mkdir/", views.mkdir, name="mkdir"),
    path("<str:ref>/delete-path/", views.delete_path, name="delete_path"),
    path("<str:ref>/exec/", views.exec_command, name="exec"),
    path("<str:ref>/commit/", views.commit, name="commit"),
    path("<str:ref>/rm/", views.remove, name="rm"),
]
