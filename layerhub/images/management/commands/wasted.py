"""``python manage.py wasted IMAGE``: an image's wasted space, as dive's report prints it (each
superseded copy of a file counted once: see the README's "Wasted space")."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.humanize import human_size
from layerhub.engine.errors import LayerhubError
from layerhub.images.lookup import image_lookup
from layerhub.images.wasted import image_wasted
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = (
        "Show an image's wasted space (bytes of files a later layer replaced or removed), its "
        "efficiency, duplicate bytes and the biggest wasted files."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image")
        parser.add_argument(
            "--limit", type=int, default=20, help="wasted files to list (default 20, 0: all)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            image = image_lookup(options["image"], user=self.acting_user(options))
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        wasted = image_wasted(image)
        report = wasted.report
        if report is None:
            positions = ", ".join(f"#{ref.position}" for ref in wasted.pending)
            raise CommandError(
                f"index pending: {len(wasted.pending)} of {len(wasted.layers)} layers of "
                f"{options['image']} have no file index yet ({positions}); wasted space is "
                "counted once every layer is indexed"
            )
        out = self.stdout.write
        out(f"Image: {options['image']} ({image.image_id}), {len(wasted.layers)} layers")
        out(f"  efficiency: {report.efficiency_percent:.4f} %")
        out(f"  wastedBytes: {report.wasted} bytes ({human_size(report.wasted)})")
        out(f"  totalBytes: {report.total} bytes ({human_size(report.total)})")
        out(
            f"  duplicateBytes: {wasted.duplicate_bytes} bytes "
            f"({human_size(wasted.duplicate_bytes)})"
        )
        limit = options["limit"]
        copies = report.copies if limit <= 0 else report.copies[:limit]
        out(
            f"Wasted Files: {len(report.copies)}"
            + (f", the {len(copies)} biggest" if len(copies) < len(report.copies) else "")
        )
        if not copies:
            return
        table = [["SIZE", "ADDED BY", "REMOVED BY", "HOW", "PATH"]]
        for raw in copies:
            copy = wasted.copy(raw)
            table.append(
                [
                    human_size(copy.size),
                    f"#{copy.added_by.position} {copy.added_by.short}",
                    f"#{copy.removed_by.position} {copy.removed_by.short}",
                    copy.reason,
                    copy.path + (f" ({copy.links} links)" if copy.links > 1 else ""),
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for r in table:
            out("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
