"""``python manage.py rmi IMAGE...``: untag and delete images, like ``docker rmi``;
``--dry-run`` says what would go and the exact bytes that frees, and changes nothing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.engine.errors import Conflict, LayerhubError
from layerhub.images.services.transfer import image_remove, image_remove_plan
from layerhub.images.sizes import DeletePlan
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Remove images: untag, and delete layers no other image uses."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="+")
        parser.add_argument("-f", "--force", action="store_true", help="remove every tag")
        parser.add_argument(
            "-n",
            "--dry-run",
            action="store_true",
            help="print what would be removed and the bytes that frees; remove nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.acting_user(options)
        for text in options["images"]:
            try:
                if options["dry_run"]:
                    self.print_plan(
                        image_remove_plan(image=text, force=options["force"], user=user)
                    )
                    continue
                lines = image_remove(image=text, force=options["force"], user=user)
            except LayerhubError as exc:
                raise CommandError(str(exc)) from None
            for line in lines:
                self.stdout.write(line)

    def print_plan(self, plan: DeletePlan) -> None:
        if plan.blocked:
            names = ", ".join(plan.containers[:5])
            raise Conflict(
                f"the delete would be refused: the image is used by container(s): {names}; "
                "remove them first"
            )
        for tag in plan.untagged:
            self.stdout.write(f"Would untag: {tag}")
        for config_digest in plan.images:
            self.stdout.write(f"Would delete image: {config_digest}")
        for chain_id, size in plan.snapshots:
            self.stdout.write(f"Would delete snapshot: {chain_id} ({size} bytes)")
        for digest, size in plan.blobs:
            self.stdout.write(f"Would delete blob: {digest} ({size} bytes)")
        for key in plan.held:
            self.stdout.write(f"Kept (a running job holds it; garbage collection frees it): {key}")
        if plan.held:
            self.stdout.write(f"held by running jobs: {plan.held_bytes} bytes")
        self.stdout.write(f"would free {plan.frees_bytes} bytes")
        if plan.several_hosts:
            self.stdout.write(f"  blobs (every host): {plan.blob_bytes} bytes")
            for host, size in plan.host_snapshots.items():
                self.stdout.write(f"  snapshots on {host}: {size} bytes")
