"""``python manage.py import FILE``: a ``docker save`` archive or an OCI layout, like
``docker load``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from layerhub.engine.errors import LayerhubError
from layerhub.images.services import image_import
from layerhub.jobs.follow import follow, worker_answers
from layerhub.jobs.models import Job


class Command(BaseCommand):
    help = "Import images from a docker save archive or an OCI layout (directory or tar)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="a docker save tar, an OCI layout directory or tar")
        parser.add_argument("--platform", help="for an index: os/arch[/variant]")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = image_import(path=options["file"], platform=options["platform"])
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        if not worker_answers():
            self.stderr.write("no worker answers yet: the import waits until one runs")
        last = follow(job, self.stdout, tty=self.stdout.isatty())
        job.refresh_from_db()
        if job.state == Job.State.FAILED:
            raise CommandError(job.error)
        if last.state == Job.State.FAILED:
            raise CommandError(last.error)
        for child in job.children.select_related("image").order_by("id"):
            image = child.image
            if image is None:
                continue
            names = [f"{t.repository}:{t.name}" for t in image.tags.select_related("repository")]
            for name in names or [f"sha256:{image.config_digest.split(':')[1]}"]:
                self.stdout.write(f"Loaded image: {name}")
