"""``python manage.py push IMAGE [REFERENCE]``: what ``docker push`` does."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import CHANGE
from layerhub.engine.errors import LayerhubError
from layerhub.images.services.transfer import image_push
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Push an image to a registry (to REFERENCE, or to the image's own name)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", help="reference, image ID or digest")
        parser.add_argument("reference", nargs="?", help="where to push: host/repo:tag")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = self.acting_user(options)
            job = image_push(
                image=options["image"],
                reference=options["reference"],
                user=user,
                team=self.acting_team(options, user, CHANGE),
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        header = f"The push refers to repository [{job.reference.rsplit(':', 1)[0]}]"
        follow_to_end(job, self.stdout, self.stderr, what="push", header=header)
        if job.image is not None:
            tag = job.reference.rsplit(":", 1)[-1]
            self.stdout.write(f"{tag}: digest: {job.image.manifest_digest}")
