"""``python manage.py pull REFERENCE``: what ``docker pull`` does, through a worker."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import PULL
from layerhub.engine.errors import LayerhubError
from layerhub.images.services.enqueue import image_pull
from layerhub.jobs.cli import LayerhubCommand
from layerhub.jobs.follow import follow_to_end


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Pull an image from a registry into the layer store, and unpack its layers."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("reference", help="e.g. debian:bookworm or host:5000/team/app:1")
        parser.add_argument("--platform", help="os/arch[/variant], default linux/amd64")
        parser.add_argument(
            "--no-wait", action="store_true", help="queue the pull and print its job id"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = self.acting_user(options)
            job = image_pull(
                reference=options["reference"],
                platform=options["platform"],
                user=user,
                team=self.acting_team(options, user, PULL),
            )
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        if options["no_wait"]:
            self.stdout.write(f"queued pull job {job.pk}")
            return
        ref = job.reference
        name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "")
        header = f"{tag or 'digest'}: Pulling from {name.split('/', 1)[-1]}"
        follow_to_end(job, self.stdout, self.stderr, what="pull", header=header)
        job.refresh_from_db()
        image = job.image
        if image is not None:
            self.stdout.write(f"Digest: {image.manifest_digest}")
        fetched = any(
            e.get("status") in ("Download complete", "Pull complete") for e in job.progress or []
        )
        status = "Downloaded newer image" if fetched else "Image is up to date"
        self.stdout.write(f"Status: {status} for {ref}")
