"""The packages pages: a search across the images the user sees, and an image's packages (the
section its page loads)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from layerhub.core.permissions import named_by, restrict
from layerhub.engine.packages.versions import OPERATORS
from layerhub.images.models import Image, Package, PackageScan
from layerhub.images.package_search import (
    SEARCH_LIMIT,
    InvalidPackageQuery,
    image_package_counts,
    image_packages,
    package_query,
    package_search,
)
from layerhub.images.views_layers import display_name, with_tags

# an image's page lists this many packages; the API and the search have the rest
IMAGE_LIST_LIMIT = 500


def package_search_page(request: HttpRequest) -> HttpResponse:
    """Which images you see have package NAME (in an ecosystem), with a version compared in
    that ecosystem's own order."""
    params = request.GET
    form = {k: params.get(k, "") for k in ("name", "ecosystem", "op", "version")}
    results: list[dict[str, object]] = []
    error = ""
    searched = bool(form["name"] or form["version"])
    if searched:
        try:
            query = package_query(
                name=form["name"],
                ecosystem=form["ecosystem"],
                op=form["op"] if form["version"] else None,
                version=form["version"],
            )
            found = package_search(user=request.user, query=query)
        except InvalidPackageQuery as exc:
            error, found = str(exc), []
        images = with_tags(
            Image.objects.filter(pk__in={p.image_id for p in found}), named_by(request.user)
        )
        names = {image.pk: display_name(image) for image in images}
        results = [{"package": p, "image_name": names.get(p.image_id, "")} for p in found]
    return render(
        request,
        "images/packages.html",
        {
            "mode": "packages",
            "form": form,
            "ecosystems": Package.Ecosystem.choices,
            "operators": OPERATORS,
            "results": results,
            "searched": searched,
            "error": error,
            "limited": len(results) >= SEARCH_LIMIT,
        },
    )


def image_packages_section(request: HttpRequest, pk: int) -> HttpResponse:
    """An image's packages: a count by ecosystem and the list (the image page loads it)."""
    image = get_object_or_404(restrict(Image.objects.all(), request.user), pk=pk)
    scan = PackageScan.objects.filter(image=image).first()
    packages = list(image_packages(image)[: IMAGE_LIST_LIMIT + 1])
    names = dict(Package.Ecosystem.choices)
    return render(
        request,
        "images/htmx/packages.html",
        {
            "image": image,
            "scan": scan,
            "counts": [
                (value, names[value], n)
                for value, n in image_package_counts(image).items()
                if value in names
            ],
            "packages": packages[:IMAGE_LIST_LIMIT],
            "more": len(packages) > IMAGE_LIST_LIMIT,
        },
    )
