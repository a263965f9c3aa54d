"""Naming images in a team's catalog: ``docker tag`` and untag."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from layerhub.accounts.models import Team
from layerhub.accounts.services import audit
from layerhub.core.permissions import CHANGE, DELETE, can
from layerhub.engine.errors import InvalidReference
from layerhub.engine.reference import parse_reference
from layerhub.images.models import Image, Repository, Tag


def tag_add(*, image: Image, reference: str, team: Team, user: Any = None) -> Tag:
    """Point ``reference`` (``registry/repository:tag``) in ``team``'s catalog at ``image``,
    creating the repository if need be; a tag that names another image moves, as
    ``docker tag`` does. Needs the developer role in the team."""
    ref = parse_reference(reference)
    if not ref.tag or ref.digest:
        raise InvalidReference(f"a tag needs a name after ':', without a digest: {reference}")
    if user is not None and not can(user, CHANGE, team):
        raise PermissionDenied(f"you need the developer role in team {team.name} to tag")
    with transaction.atomic():
        repository, _ = Repository.objects.get_or_create(
            team=team, registry=ref.registry, name=ref.repository
        )
        image.repositories.add(repository)
        tag, created = Tag.objects.update_or_create(
            repository=repository,
            name=ref.tag,
            defaults={"image": image, "updated_at": timezone.now()},
        )
        audit(
            actor=user,
            action="tag.create" if created else "tag.move",
            team=team,
            target=f"{repository}:{tag.name}",
            image=image.config_digest,
        )
    return tag


def tag_remove(*, tag: Tag, user: Any = None) -> None:
    """Remove a tag; its image stays (untagged if this was its last name: ``rmi`` deletes
    images). Needs the maintainer role in the tag's team."""
    team = tag.repository.team
    if user is not None and not can(user, DELETE, team):
        raise PermissionDenied(f"you need the maintainer role in team {team.name} to untag")
    with transaction.atomic():
        name = f"{tag.repository}:{tag.name}"
        tag.delete()
        audit(actor=user, action="tag.delete", team=team, target=name)
