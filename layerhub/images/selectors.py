"""Reads of the catalog: image listings as ``docker images`` shows them; registries and how
each is reached (TLS state, mirrors)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db.models import Prefetch, QuerySet

from layerhub.accounts.models import Team
from layerhub.engine.reference import Reference
from layerhub.engine.registry import TLSState, describe_tls
from layerhub.engine.registry.tls import marked_insecure
from layerhub.images.models import Image, ImageLayer, RegistryCredential, Tag


@dataclass(frozen=True)
class ImageRow:
    """One line of ``docker images``: a repository:tag (or <none>) and its image."""

    repository: str
    tag: str
    image: Image
    image_id: str
    created: datetime | None
    size: int  # uncompressed bytes of every layer (Docker's SIZE), or compressed if not unpacked
    unpacked: bool


def image_size(image: Image) -> tuple[int, bool]:
    """(bytes, unpacked): the sum of the layers' unpacked sizes once all are unpacked, else
    the sum of their compressed sizes."""
    layers = [row.layer for row in image.image_layers.all()]
    if layers and all(layer.unpacked_size is not None for layer in layers):
        return sum(layer.unpacked_size or 0 for layer in layers), True
    return sum(layer.size for layer in layers), False


def _familiar(registry: str, name: str) -> str:
    return Reference(registry, name, None, None).familiar


def image_rows() -> list[ImageRow]:
    """Every tag, then every image no tag points at (``<none>``), newest first."""
    images = Image.objects.prefetch_related(
        Prefetch("image_layers", queryset=ImageLayer.objects.select_related("layer")),
        "repositories",
        Prefetch("tags", queryset=Tag.objects.select_related("repository")),
    )
    rows: list[ImageRow] = []
    for image in images:
        size, unpacked = image_size(image)
        tags = list(image.tags.all())
        names = [(_familiar(t.repository.registry, t.repository.name), t.name) for t in tags]
        if not names:
            repos = list(image.repositories.all())
            names = [(_familiar(r.registry, r.name), "<none>") for r in repos] or [
                ("<none>", "<none>")
            ]
        for repository, tag in names:
            rows.append(
                ImageRow(repository, tag, image, image.image_id, image.created, size, unpacked)
            )
    rows.sort(key=lambda r: (r.image.added_at, r.repository, r.tag), reverse=True)
    return rows


def image_display_name(image: Image) -> str:
    """How ``docker ps`` names a container's image: a tag if it has one, else its ID."""
    tag = image.tags.select_related("repository").first()
    if tag is None:
        return image.image_id
    return f"{_familiar(tag.repository.registry, tag.repository.name)}:{tag.name}"


@dataclass(frozen=True)
class HistoryRow:
    """One line of ``docker history``, newest first."""

    image: str  # the image ID on the top line, "<missing>" below, as Docker prints
    created: str | None
    created_by: str
    size: int
    comment: str
    empty_layer: bool
    author: str = ""


def image_history(image: Image) -> list[HistoryRow]:
    """The image's history entries matched with its layers (empty_layer entries have none)."""
    layers = [row.layer for row in image.image_layers.select_related("layer").order_by("position")]
    history = [h for h in (image.config.get("history") or []) if isinstance(h, dict)]
    rows: list[HistoryRow] = []
    index = 0
    for entry in history:
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and index < len(layers):
            layer = layers[index]
            size = layer.unpacked_size if layer.unpacked_size is not None else layer.size
            index += 1
        rows.append(
            HistoryRow(
                "<missing>",
                entry.get("created"),
                str(entry.get("created_by", "")),
                size,
                str(entry.get("comment", "")),
                empty,
                str(entry.get("author", "")),
            )
        )
    rows.reverse()
    if rows:
        rows[0] = replace(rows[0], image=image.image_id)
    return rows


# -- registries: how each is reached ------------------------------------------------------------


def registry_insecure(registry: str, *, saved: RegistryCredential | None = None) -> bool:
    """Whether ``registry`` is marked insecure: by its login (``login --insecure``) or by
    LAYERHUB_INSECURE_REGISTRIES. Loopback registries need neither to fall back to plain
    HTTP, but only a marked one is used with a certificate that fails verification."""
    if saved is not None and saved.insecure:
        return True
    return marked_insecure(registry, settings.LAYERHUB_INSECURE_REGISTRIES)


def _logins(team: Team | None) -> QuerySet[RegistryCredential]:
    """``team``'s stored logins; every team's for None (the operator's command line)."""
    logins = RegistryCredential.objects.all()
    return logins if team is None else logins.filter(team=team)


def registry_tls_state(
    registry: str, *, saved: RegistryCredential | None = None, team: Team | None = None
) -> TLSState:
    """How layerhub reaches ``registry`` (``docker.io``, ``127.0.0.1:5000``) for ``team``
    (None: any team's login marks it insecure): trusted (the OS trust store) or a private
    CA, a client certificate, insecure, and its mirrors; read from the certs directory, the
    settings and the team's login, never from the network."""
    if saved is None:
        saved = _logins(team).filter(host=registry).first()
    mirrors = settings.LAYERHUB_REGISTRY_MIRRORS.get(registry, ())
    return describe_tls(
        Reference(registry, "x", None, None).api_host,
        certs_dir=settings.LAYERHUB_CERTS_DIR,
        insecure=registry_insecure(registry, saved=saved),
        mirrors=tuple(m.url for m in mirrors),
    )


@dataclass(frozen=True)
class RegistryAccess:
    """A registry as the logins listing shows it: its login (if any) and its TLS state."""

    registry: str
    username: str  # empty: no login stored, or an anonymous one
    tls: TLSState
    login: RegistryCredential | None = None  # the stored login, for a page's delete button


def _certs_dir_hosts() -> list[str]:
    root: Path = settings.LAYERHUB_CERTS_DIR
    try:
        return [p.name for p in root.iterdir() if p.is_dir()]
    except OSError:  # no certs directory (yet): nothing configured there
        return []


def registry_access_list(team: Team | None = None) -> list[RegistryAccess]:
    """Every registry layerhub knows something about (a login of ``team``, mirrors, an
    entry in the certs directory, an insecure mark), by name, with its TLS state and
    mirrors. ``team`` None lists every team's logins (the operator's command line); a
    team's page passes the team, so it sees its own logins alone."""
    saved = {c.host: c for c in _logins(team).order_by("-pk")}
    names = set(saved) | set(settings.LAYERHUB_REGISTRY_MIRRORS) | set(_certs_dir_hosts())
    names |= {entry for entry in settings.LAYERHUB_INSECURE_REGISTRIES if "/" not in entry}
    rows = []
    for name in sorted(names):
        login = saved.get(name)
        rows.append(
            RegistryAccess(
                registry=name,
                username=login.username if login is not None else "",
                tls=registry_tls_state(name, saved=login, team=team),
                login=login,
            )
        )
    return rows
