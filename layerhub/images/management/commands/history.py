"""``python manage.py history IMAGE``: like ``docker history``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.timesince import timesince

from layerhub.core.humanize import human_size
from layerhub.engine.errors import LayerhubError
from layerhub.images.lookup import image_lookup
from layerhub.images.selectors import image_history
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Show an image's history: IMAGE, CREATED, CREATED BY, SIZE, COMMENT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image")
        parser.add_argument("--no-trunc", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            rows = image_history(image_lookup(options["image"], user=self.acting_user(options)))
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        table = [["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]]
        now = timezone.now()
        for row in rows:
            when = parse_datetime(row.created) if row.created else None
            created = f"{timesince(when, now).split(',')[0]} ago" if when else "N/A"
            by = row.created_by if options["no_trunc"] else row.created_by[:45]
            table.append([row.image, created, by, human_size(row.size), row.comment])
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            self.stdout.write(
                "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
