"""``python manage.py ps``: containers, as ``docker ps -a`` lists them."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from django.utils.timesince import timesince

from layerhub.containers.models import Container
from layerhub.images.selectors import image_display_name
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = "List containers: CONTAINER ID, IMAGE, COMMAND, CREATED, STATUS, NAMES."

    def handle(self, *args: Any, **options: Any) -> None:
        rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
        now = timezone.now()
        for c in Container.objects.select_related("image"):
            command = " ".join(c.last_command)
            status = c.state if c.last_exit_code is None else f"exited ({c.last_exit_code})"
            rows.append(
                [
                    c.short_id,
                    image_display_name(c.image),
                    f'"{command[:20]}"' if command else '""',
                    f"{timesince(c.created_at, now).split(',')[0]} ago",
                    status,
                    c.name,
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            self.stdout.write(
                "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
            )
