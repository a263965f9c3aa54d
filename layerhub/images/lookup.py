"""Finding an image the way Docker's commands accept one: reference, image ID or digest."""

from __future__ import annotations

import re

from layerhub.engine.errors import ImageNotFound, InvalidReference
from layerhub.engine.reference import parse_reference
from layerhub.images.models import Image, Tag

_HEX_PREFIX = re.compile(r"(?:sha256:)?([a-f0-9]{4,64})")


def image_lookup(text: str) -> Image:
    """``debian:12``, ``127.0.0.1:5000/team/app:1``, ``repo@sha256:...``, an image ID or its
    prefix (``3f4e1a2b9c0d``), or a manifest digest. Raises ImageNotFound."""
    text = text.strip()
    hexmatch = _HEX_PREFIX.fullmatch(text)
    if hexmatch:
        prefix = hexmatch.group(1)
        by_id = list(Image.objects.filter(config_digest__startswith=f"sha256:{prefix}")[:2])
        by_id = by_id or list(
            Image.objects.filter(manifest_digest__startswith=f"sha256:{prefix}")[:2]
        )
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
            Image.objects.filter(
                manifest_digest=ref.digest,
                repositories__registry=ref.registry,
                repositories__name=ref.repository,
            ).first()
            or Image.objects.filter(manifest_digest=ref.digest).first()
        )
        if image is None:
            raise ImageNotFound(f"no such image: {ref}")
        return image
    tag = (
        Tag.objects.select_related("image")
        .filter(repository__registry=ref.registry, repository__name=ref.repository, name=ref.tag)
        .first()
    )
    if tag is None:
        raise ImageNotFound(f"no such image: {ref.familiar}")
    return tag.image
