"""Finding an image the way Docker's commands accept one: reference, image ID or digest."""

from __future__ import annotations

import re
from typing import Any

from layerhub.accounts.models import Team
from layerhub.core.permissions import restrict
from layerhub.engine.errors import ImageNotFound, InvalidReference
from layerhub.engine.reference import parse_reference
from layerhub.images.models import Image, Tag

_HEX_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{4,64})")


def image_lookup(text: str, *, user: Any = None, team: Team | None = None) -> Image:
    """``debian:12``, ``127.0.0.1:5000/team/app:1``, ``repo@sha256:...``, an image ID or its
    prefix (``3f4e1a2b9c0d``), or a manifest digest. Raises ImageNotFound.

    With ``user``, only images they may see are found (another team's private image is "no
    such image"); a tag is looked up in ``team``'s repositories first, then in every
    repository the user sees (an error if two of those name different images)."""
    text = text.strip()
    images = Image.objects.all() if user is None else restrict(Image.objects.all(), user)
    tags = Tag.objects.all() if user is None else restrict(Tag.objects.all(), user)
    hexmatch = _HEX_PREFIX.fullmatch(text)
    if hexmatch:
        prefix = hexmatch.group(1)
        by_id = list(images.filter(config_digest__startswith=f"sha256:{prefix}")[:2])
        by_id = by_id or list(images.filter(manifest_digest__startswith=f"sha256:{prefix}")[:2])
        if len(by_id) == 1:
            return by_id[0]
        if len(by_id) > 1:
            raise ImageNotFound(f"{text}: more than one image has this ID prefix; give more")
    try:
        ref = parse_reference(text)
    except InvalidReference:
        if hexmatch:
            raise ImageNotFound(f"no such image: {text}") from None
        raise
    if ref.digest:
        image = (
            images.filter(
                manifest_digest=ref.digest,
                repositories__registry=ref.registry,
                repositories__name=ref.repository,
            ).first()
            or images.filter(manifest_digest=ref.digest).first()
        )
        if image is None:
            raise ImageNotFound(f"no such image: {ref}")
        return image
    named = tags.select_related("image").filter(
        repository__registry=ref.registry, repository__name=ref.repository, name=ref.tag
    )
    if team is not None:
        own = named.filter(repository__team=team).first()
        if own is not None:
            return own.image
    found = {tag.image_id: tag.image for tag in named[:20]}
    if not found:
        raise ImageNotFound(f"no such image: {ref.familiar}")
    if len(found) > 1:
        raise ImageNotFound(
            f"{ref.familiar} names different images in different teams: choose a team"
        )
    return next(iter(found.values()))
