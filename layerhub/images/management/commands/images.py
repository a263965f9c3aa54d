"""``python manage.py images``: the catalog as ``docker images`` lists it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser
from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.core.humanize import human_size
from layerhub.images.selectors import image_rows
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = "List images: REPOSITORY, TAG, IMAGE ID, CREATED, SIZE."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--digests", action="store_true", help="show manifest digests")

    def handle(self, *args: Any, **options: Any) -> None:
        header = ["REPOSITORY", "TAG"]
        if options["digests"]:
            header.append("DIGEST")
        header += ["IMAGE ID", "CREATED", "SIZE"]
        table = [header]
        now = timezone.now()
        for row in image_rows():
            line = [row.repository, row.tag]
            if options["digests"]:
                line.append(row.image.manifest_digest)
            created = f"{timesince(row.created, now).split(',')[0]} ago" if row.created else "N/A"
            size = human_size(row.size) + ("" if row.unpacked else " (compressed)")
            line += [row.image_id, created, size]
            table.append(line)
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            self.stdout.write(
                "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
