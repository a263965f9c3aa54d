"""``python manage.py untag REFERENCE``: remove a tag from a team's catalog; the image stays
(``rmi`` deletes images)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from layerhub.core.permissions import DELETE, restrict
from layerhub.engine.reference import parse_reference
from layerhub.images.models import Tag
from layerhub.images.services import tag_remove
from layerhub.jobs.cli import LayerhubCommand


class Command(LayerhubCommand):
    acts_for_team = True
    help = "Remove a tag (registry/repository:tag) from a team's catalog; the image stays."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("reference", nargs="+", help="registry/repository:tag")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self.acting_user(options)
        team = self.acting_team(options, user, DELETE)
        for text in options["reference"]:
            ref = parse_reference(text)
            if not ref.tag or ref.digest:
                raise CommandError(f"untag needs registry/repository:tag: {text}")
            tag = (
                restrict(Tag.objects.select_related("repository__team"), user, DELETE)
                .filter(
                    repository__team=team,
                    repository__registry=ref.registry,
                    repository__name=ref.repository,
                    name=ref.tag,
                )
                .first()
            )
            if tag is None:
                raise CommandError(f"no such tag in team {team}: {ref.familiar}")
            tag_remove(tag=tag, user=user)
            self.stdout.write(f"Untagged: {tag.repository}:{tag.name}")
