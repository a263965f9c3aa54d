"""``python manage.py dedup [--dry-run]``: hardlink identical files across snapshots, as a
job (its leases keep what it links from being deleted meanwhile), then print what it freed."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.images.services.dedup import store_dedup_report, store_dedup_start
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    help = (
        "Store each file once: replace a file of one snapshot that is identical (bytes, mode, "
        "owner, mtime, xattrs) to a file of another by a hardlink of it. Only snapshots/, "
        "never a container's writable layer; images read back the same."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-n",
            "--dry-run",
            action="store_true",
            help="compare the files and print what linking them would free; change nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        job = store_dedup_start(dry_run=options["dry_run"], user=self.acting_user(options))
        job = follow_to_end(job, self.stdout, self.stderr, what="dedup")
        report = store_dedup_report(job)
        if report is None:
            raise CommandError("the dedup job ended without a report")
        for line in report.skipped:
            self.stdout.write(f"Left alone: {line}")
        self.stdout.write(report.summary())
