"""``python manage.py gc [--dry-run]``: collect garbage in this process, as ``docker system
prune`` does: every item deleted (or, with --dry-run, that would be), then the total."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from layerhub.images.gc import GCReport, store_gc
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = (
        "Delete what nothing references (blobs, layers and snapshots no image uses, container "
        "layers no container has, tmp/ leftovers) and what the retention settings let go "
        "(untagged images, ended jobs, saved archives, stale uploads, multipart uploads left "
        "pending in the object store). What a running job has leased stays."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-n",
            "--dry-run",
            action="store_true",
            help="print what would be deleted and the bytes that frees; delete nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = store_gc(dry_run=options["dry_run"])
        self.print_report(report)

    def print_report(self, report: GCReport) -> None:
        for item in report.items:
            self.stdout.write(item.line(dry_run=report.dry_run))
        for key in report.held:
            self.stdout.write(f"Kept (held by a running job or process): {key}")
        for what in report.left:
            self.stdout.write(f"Left (could not be removed): {what}")
        if not report.items:
            self.stdout.write("Nothing to delete")
        self.stdout.write("")
        self.stdout.write(report.total_line())
