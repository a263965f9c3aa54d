"""``python manage.py import FILE``: a ``docker save`` archive or an OCI layout, like
``docker load``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.images.services.enqueue import image_import
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Import images from a docker save archive or an OCI layout (directory or tar)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="a docker save tar, an OCI layout directory or tar")
        parser.add_argument("--platform", help="for an index: os/arch[/variant]")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = self.acting_user(options)
            job = image_import(
                path=options["file"],
                platform=options["platform"],
                user=user,
                team=self.acting_team(options, user, CHANGE),
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        follow_to_end(job, self.stdout, self.stderr, what="import")
        for child in job.children.select_related("image").order_by("id"):
            image = child.image
            if image is None:
                continue
            names = [f"{t.repository}:{t.name}" for t in image.tags.select_related("repository")]
            for name in names or [f"sha256:{image.config_digest.split(':')[1]}"]:
                self.stdout.write(f"Loaded image: {name}")
