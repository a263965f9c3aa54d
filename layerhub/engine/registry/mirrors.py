"""Registry mirrors, as containerd's ``hosts.toml`` gives them: for a registry, hosts tried
first for pulls (manifests and blobs), in order, with the registry itself as the last
resort when a mirror lacks what is asked for, is down or refuses. Pushes never go to a
mirror. A mirror gets only its own login; every blob it serves is verified by digest like
any other.

Written as ``docker.io=https://mirror.local,https://mirror2.local;ghcr.io=http://10.0.0.5:5000``
(LAYERHUB_REGISTRY_MIRRORS).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidReference
from ..reference import normalize_registry


@dataclass(frozen=True)
class Mirror:
    """One mirror: its scheme (https, or http when written so) and host[:port]."""

    scheme: str
    host: str

    @property
    def url(self) -> str:
        """``https://mirror.local:5000``, as the setting wrote it (normalized)."""
        return f"{self.scheme}://{self.host}"


def parse_mirror(raw: str) -> Mirror:
    """``https://mirror.local:5000`` as a Mirror; ValueError saying what is wrong."""
    text = raw.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ValueError(f"mirror {raw!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"mirror {raw!r} must start with https:// (or http://)")
    if not parts.hostname or "@" in parts.netloc:
        raise ValueError(f"mirror {raw!r} names no host (logins are given with `login`)")
    if parts.path not in ("", "/", "/v2", "/v2/") or parts.query or parts.fragment:
        raise ValueError(f"mirror {raw!r}: a path prefix is not supported")
    return Mirror(parts.scheme, parts.netloc.lower())


def parse_mirrors(text: str) -> dict[str, tuple[Mirror, ...]]:
    """``registry=url,url;registry=url`` as {registry: mirrors}; registries are normalized
    as references name them (``index.docker.io`` is ``docker.io``). ValueError otherwise."""
    out: dict[str, tuple[Mirror, ...]] = {}
    for group in text.split(";"):
        if not group.strip():
            continue
        registry, sep, urls = group.partition("=")
        if not sep or not registry.strip():
            raise ValueError(f"{group.strip()!r} is not registry=mirror-url[,mirror-url...]")
        try:
            name = normalize_registry(registry.strip())
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None
        if name in out:
            raise ValueError(f"mirrors for {name} are given twice")
        mirrors = tuple(parse_mirror(url) for url in urls.split(",") if url.strip())
        if not mirrors:
            raise ValueError(f"no mirror URL given for {name}")
        out[name] = mirrors
    return out
