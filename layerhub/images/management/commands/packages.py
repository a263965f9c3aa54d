"""``python manage.py packages [IMAGE] [--reindex]`` and ``packages --search NAME --below V``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import named_by, restrict
from layerhub.engine.errors import LayerhubError
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Package, PackageScan
from layerhub.images.package_search import package_query, package_search
from layerhub.images.services.packages import image_packages_scan
from layerhub.images.views_layers import display_name, with_tags
from layerhub.jobs.cli import LayerhubCommand

# --below V is "< V", and so on
COMPARISONS = {"below": "<", "at_most": "<=", "exactly": "=", "at_least": ">=", "above": ">"}


class Command(LayerhubCommand):
    acts_for_team = True
    help = (
        "Record installed packages (dpkg, apk, rpm, Python) of IMAGE or of every image not yet "
        "scanned (--reindex: every image again), or search them: --search NAME "
        "[--ecosystem E] [--below|--at-most|--exactly|--at-least|--above VERSION]."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", nargs="?")
        parser.add_argument("--reindex", action="store_true", help="scan images scanned before")
        parser.add_argument("--search", metavar="NAME")
        parser.add_argument("--ecosystem", choices=Package.Ecosystem.values)
        group = parser.add_mutually_exclusive_group()
        for option in COMPARISONS:
            group.add_argument("--" + option.replace("_", "-"), metavar="VERSION")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.acting_user(options)
        try:
            if options["search"] is not None:
                self._search(user, options)
            else:
                self._record(user, options)
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None

    def _record(self, user: Any, options: dict[str, Any]) -> None:
        if options["image"]:
            images = [image_lookup(options["image"], user=user)]
        else:
            queryset = Image.objects.all() if user is None else restrict(Image.objects.all(), user)
            if not options["reindex"]:
                queryset = queryset.exclude(pk__in=PackageScan.objects.values("image_id"))
            images = list(queryset.order_by("pk"))
        failed = 0
        for image in images:
            try:
                scan = image_packages_scan(image=image)
            except LayerhubError as exc:
                failed += 1
                self.stderr.write(f"{image.image_id}: {exc}")
                continue
            skipped = f", {len(scan.notes)} skipped" if scan.notes else ""
            self.stdout.write(f"{image.image_id}: {scan.count} packages{skipped}")
            for note in scan.notes:
                self.stdout.write(f"  skipped: {note}")
        if failed:
            raise CommandError(f"{failed} of {len(images)} images not scanned")

    def _search(self, user: Any, options: dict[str, Any]) -> None:
        op = version = None
        for option, symbol in COMPARISONS.items():
            if options.get(option) is not None:
                op, version = symbol, options[option]
        query = package_query(
            name=options["search"], ecosystem=options["ecosystem"], op=op, version=version
        )
        found = package_search(user=user, query=query)
        repositories = None if user is None else named_by(user)
        images = with_tags(Image.objects.filter(pk__in={p.image_id for p in found}), repositories)
        names = {image.pk: display_name(image) for image in images}
        table = [["IMAGE", "ECOSYSTEM", "PACKAGE", "VERSION", "FILE"]]
        for p in found:
            table.append([names[p.image_id], p.ecosystem, p.name, p.version, p.source_path])
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            self.stdout.write(
                "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
