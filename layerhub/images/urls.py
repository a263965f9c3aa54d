"""Routes of the images pages."""

from __future__ import annotations

from django.urls import URLPattern, path

from layerhub.images import views, views_packages, views_search, views_wasted

app_name = "images"

urlpatterns: list[URLPattern] = [
    path("", views.image_list, name="list"),
    path("search/", views_search.search_page, name="search"),
    path("packages/", views_packages.package_search_page, name="packages"),
    path("<int:pk>/", views.image_detail, name="detail"),
    path("<int:pk>/packages/", views_packages.image_packages_section, name="image_packages"),
    path("<int:pk>/wasted/", views_wasted.image_wasted_section, name="image_wasted"),
    path("<int:pk>/files/", views_wasted.image_file_tree, name="files"),
    path("<int:pk>/pull/", views.image_repull, name="pull"),
    path("<int:pk>/push/", views.image_push_view, name="push"),
    path("<int:pk>/save/", views.image_save_view, name="save"),
    path("<int:pk>/delete/", views.image_delete, name="delete"),
    path("<int:pk>/retry-unpack/", views.image_retry_unpack, name="retry_unpack"),
]
