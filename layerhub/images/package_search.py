"""Reads of installed packages: an image's list, and "which images have openssl below 3.0.15".

Names are matched in SQL (an index range on the searched form of the name); versions are then
compared in Python, in each ecosystem's own order, which SQL cannot do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet

from layerhub.core.permissions import restrict
from layerhub.engine.errors import LayerhubError
from layerhub.engine.packages.scan import ECOSYSTEMS, package_key
from layerhub.engine.packages.versions import OPERATORS, version_matches
from layerhub.images.models import Image, Package

# a search answers at most this many packages (the newest images first)
SEARCH_LIMIT = 1000


class InvalidPackageQuery(LayerhubError):
    """A package search that cannot run: no name, an unknown ecosystem or operator, or an
    operator without a version."""


@dataclass(frozen=True)
class PackageQuery:
    """A checked package search: a name, optionally an ecosystem, optionally ``op version``."""

    name: str
    ecosystem: str | None = None
    op: str | None = None
    version: str | None = None


def package_query(
    *, name: str | None, ecosystem: str | None = None, op: str | None = None, version: str | None
) -> PackageQuery:
    """Check a search's parts (raises InvalidPackageQuery with a message for a person)."""
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise InvalidPackageQuery("give a package name (at most 255 characters)")
    ecosystem = (ecosystem or "").strip() or None
    if ecosystem is not None and ecosystem not in ECOSYSTEMS:
        raise InvalidPackageQuery(
            f"unknown ecosystem {ecosystem!r}: one of {', '.join(ECOSYSTEMS)}"
        )
    op = (op or "").strip() or None
    version = (version or "").strip() or None
    if op is not None and op not in OPERATORS:
        raise InvalidPackageQuery(f"unknown version operator {op!r}: one of {' '.join(OPERATORS)}")
    if (op is None) != (version is None):
        raise InvalidPackageQuery("a version comparison needs both an operator and a version")
    if version is not None and len(version) > 255:
        raise InvalidPackageQuery("a version is at most 255 characters")
    return PackageQuery(name, ecosystem, op, version)


def _name_keys(query: PackageQuery) -> list[str]:
    if query.ecosystem is not None:
        return [package_key(query.ecosystem, query.name)]
    # without an ecosystem, both forms: "Foo_Bar" finds the dpkg "foo_bar" and the Python "foo-bar"
    return sorted({package_key(e, query.name) for e in ECOSYSTEMS})


def package_search(*, user: Any, query: PackageQuery) -> list[Package]:
    """The packages named ``query.name`` (in ``query.ecosystem``) whose version satisfies the
    query's comparison, in images ``user`` may see, newest images first (at most SEARCH_LIMIT).
    A version its ecosystem cannot order (an invalid PEP 440 one) matches no comparison.
    ``user`` None is the machine's operator (the CLI with no superuser yet): every image."""
    rows = Package.objects.filter(name_key__in=_name_keys(query)).select_related("image")
    if user is not None:
        rows = rows.filter(image__in=restrict(Image.objects.all(), user).values("pk"))
    if query.ecosystem is not None:
        rows = rows.filter(ecosystem=query.ecosystem)
    rows = rows.order_by("-image__added_at", "-image_id", "ecosystem", "name_key", "id")
    found: list[Package] = []
    for row in rows.iterator(chunk_size=2000):
        if (
            query.op is not None
            and query.version is not None
            and not version_matches(row.ecosystem, row.version, query.op, query.version)
        ):
            continue
        found.append(row)
        if len(found) >= SEARCH_LIMIT:
            break
    return found


def image_packages(image: Image) -> QuerySet[Package]:
    """An image's recorded packages, by ecosystem and name."""
    return Package.objects.filter(image=image).order_by("ecosystem", "name_key", "version", "id")


def image_package_counts(image: Image) -> dict[str, int]:
    """How many packages ``image`` has in each ecosystem."""
    counts = (
        Package.objects.filter(image=image)
        .values("ecosystem")
        .annotate(n=Count("id"))
        .order_by("ecosystem")
    )
    return {row["ecosystem"]: row["n"] for row in counts}
