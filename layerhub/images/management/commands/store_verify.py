"""``python manage.py store_verify``: compare the store on disk with the catalog's records
(sizes, orphans, missing files); exits non-zero when they differ."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.images.verify import store_verify, store_verify_fix_sizes
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    help = (
        "Walk the store and compare every recorded size with the disk; report orphans and "
        "missing files. Exits 1 if anything differs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--fix-sizes",
            action="store_true",
            help="record the sizes found on disk where they differ and count again the "
            "images of a miscounted layer (orphans and missing files are only reported), "
            "then verify again",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        report = store_verify()
        if options["fix_sizes"]:
            for line in store_verify_fix_sizes(report):
                self.stdout.write(f"fixed {line}")
            report = store_verify()
        for finding in report.findings:
            self.stdout.write(finding.line())
        for key in report.held:
            self.stdout.write(f"held by a running job or process (not an orphan): {key}")
        if not report.ok:
            raise CommandError(report.summary())
        self.stdout.write(report.summary())
