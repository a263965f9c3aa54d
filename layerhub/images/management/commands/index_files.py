"""``python manage.py index_files [--all | IMAGE...] [--reindex] [--queue]``: record the file
index of snapshots made before indexing, by walking them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import restrict
from layerhub.engine.errors import LayerhubError
from layerhub.images.lookup import image_lookup
from layerhub.images.models import Image, Layer
from layerhub.images.services.file_index import index_files_start, layers_index, layers_to_index
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = (
        "Walk the snapshots of IMAGE... (or of every image with --all) that have no file index "
        "yet, and record it (paths, types, modes, owners, sizes, sha256 of contents, "
        "whiteouts). Snapshots made since indexing was added have theirs from their unpack."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("images", nargs="*", metavar="IMAGE")
        parser.add_argument("--all", action="store_true", help="every unpacked layer")
        parser.add_argument(
            "--reindex", action="store_true", help="walk layers that have an index again"
        )
        parser.add_argument(
            "--queue", action="store_true", help="queue an index job instead of running here"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["images"]) == bool(options["all"]):
            raise CommandError("name IMAGE... or --all (not both)")
        user = self.acting_user(options)
        try:
            images: list[Image] | None = [
                image_lookup(text, user=user) for text in options["images"]
            ] or None
        except LayerhubError as exc:
            raise CommandError(str(exc)) from None
        if images is None and user is not None and not user.is_superuser:
            images = list(restrict(Image.objects.all(), user))
        if options["queue"]:
            if options["reindex"]:
                raise CommandError("--reindex runs here only (not with --queue)")
            job = index_files_start(user=user, images=images)
            self.stdout.write(f"queued index job {job.pk}")
            return
        layers = layers_to_index(images=images, reindex=options["reindex"])

        def said(layer: Layer, entries: int | None, why: str | None) -> None:
            short = layer.chain_id.removeprefix("sha256:")[:12]
            if why is not None:
                self.stderr.write(f"{short}: not indexed: {why}")
            elif entries is not None:
                self.stdout.write(f"{short}: {entries} entries")

        report = layers_index(layers, reindex=options["reindex"], on_layer=said)
        self.stdout.write(f"indexed {len(report.indexed)} of {len(layers)} layers")
        if report.skipped:
            raise CommandError(f"{len(report.skipped)} layers not indexed")
