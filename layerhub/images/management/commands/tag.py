"""``python manage.py tag SOURCE TARGET``: what ``docker tag`` does, in a team's catalog."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from layerhub.core.permissions import CHANGE
from layerhub.images.lookup import image_lookup
from layerhub.images.services import tag_add
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Give an image of the catalog another name (registry/repository:tag) in a team."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", help="a reference, an image ID or a digest")
        parser.add_argument("target", help="registry/repository:tag, e.g. 127.0.0.1:5000/app:2")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.acting_user(options)
        team = self.acting_team(options, user, CHANGE)
        image = image_lookup(options["source"], user=user, team=team)
        tag = tag_add(image=image, reference=options["target"], team=team, user=user)
        self.stdout.write(f"Tagged {image.image_id} as {tag.repository}:{tag.name} in {team}")
