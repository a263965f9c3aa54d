"""Image references, parsed and normalized the way Docker does.

``debian`` is ``docker.io/library/debian:latest``; ``ghcr.io/org/app:1.2`` keeps its registry;
``localhost:5000/team/app@sha256:...`` names a registry with a port and a digest; a tag and a
digest may both be given (the digest decides what is pulled). The grammar is the one of
distribution's ``reference`` package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidReference

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
OFFICIAL_NAMESPACE = "library"
# where docker.io's registry API actually answers
DOCKER_HUB_API = "registry-1.docker.io"
MAX_NAME_LENGTH = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")


@dataclass(frozen=True)
class Reference:
    """A normalized image reference."""

    registry: str  # "docker.io", "ghcr.io", "127.0.0.1:5000"
    repository: str  # "library/debian", "team/app"
    tag: str | None  # None only when a digest alone was given
    digest: str | None

    @property
    def name(self) -> str:
        """Registry and repository: ``docker.io/library/debian``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (and port) the registry API answers on."""
        return DOCKER_HUB_API if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def target(self) -> str:
        """What a manifest request names: the digest if there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        """The same repository with another tag and no digest."""
        if not _TAG.fullmatch(tag):
            raise InvalidReference(f"invalid tag {tag!r}")
        return Reference(self.registry, self.repository, tag, None)

    def with_digest(self, digest: str) -> Reference:
        """The same repository pinned to a digest (the tag kept for display)."""
        return Reference(self.registry, self.repository, self.tag, digest)

    @property
    def familiar(self) -> str:
        """The short form ``docker images`` shows: ``debian:latest``, ``team/app:1``."""
        repo = self.repository
        if self.registry == DEFAULT_REGISTRY:
            prefix = OFFICIAL_NAMESPACE + "/"
            name = repo[len(prefix) :] if repo.startswith(prefix) else repo
        else:
            name = f"{self.registry}/{repo}"
        return name + self._suffix()

    def _suffix(self) -> str:
        out = f":{self.tag}" if self.tag else ""
        return out + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _check_port(registry: str, original: str) -> None:
    """Refuse a registry (already matched by ``_DOMAIN``) whose port no TCP connection can
    use, ``:0`` or past 65535: the grammar's ``[0-9]+`` alone lets ``:99999999999999999999``
    through to the HTTP client."""
    tail = registry.rsplit("]", 1)[-1]  # an IPv6 literal's own colons are not a port
    if ":" not in tail:
        return
    port = tail.rsplit(":", 1)[1]
    if len(port) > 5 or not 1 <= int(port) <= 65535:
        raise InvalidReference(f"invalid registry in {original!r}: port {port} is not in 1-65535")


def normalize_registry(host: str) -> str:
    """A registry host as ``login`` takes it: ``https://ghcr.io/`` is ``ghcr.io``, and Docker
    Hub's aliases are ``docker.io``."""
    text = host.strip()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.endswith("/v1") or text.endswith("/v2"):
        text = text[:-3]
    if text in ("index.docker.io", DOCKER_HUB_API, DEFAULT_REGISTRY):
        return DEFAULT_REGISTRY
    if not _DOMAIN.fullmatch(text):
        raise InvalidReference(f"invalid registry host {host!r}")
    _check_port(text, host)
    return text


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        return first, rest
    return DEFAULT_REGISTRY, name


def parse_reference(text: str) -> Reference:
    """Parse and normalize ``text``; raise InvalidReference saying what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidReference("an image reference is required, e.g. debian:bookworm")
    original = text
    text = text.strip()
    if any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference {original!r}: contains whitespace")
    digest: str | None = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST.fullmatch(digest):
            raise InvalidReference(f"invalid reference {original!r}: malformed digest {digest!r}")
        if not _SHA256.fullmatch(digest):
            raise InvalidReference(
                f"invalid reference {original!r}: only sha256 digests (64 lowercase hex "
                f"characters) are supported, got {digest!r}"
            )
    tag: str | None = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(
                f"invalid reference {original!r}: invalid tag {tag!r} (letters, digits, "
                "'_', '.', '-'; at most 128, not starting with '.' or '-')"
            )
    if not text:
        raise InvalidReference(f"invalid reference {original!r}: no repository name")
    registry, path = _split_domain(text)
    if registry != DEFAULT_REGISTRY and not _DOMAIN.fullmatch(registry):
        raise InvalidReference(f"invalid reference {original!r}: invalid registry {registry!r}")
    _check_port(registry, original)
    if registry == "index.docker.io":
        registry = DEFAULT_REGISTRY
    if path.lower() != path:
        raise InvalidReference(f"invalid reference {original!r}: repository name must be lowercase")
    components = path.split("/")
    for comp in components:
        if not _COMPONENT.fullmatch(comp):
            raise InvalidReference(
                f"invalid reference {original!r}: invalid repository path component {comp!r}"
            )
    if registry == DEFAULT_REGISTRY and len(components) == 1:
        path = f"{OFFICIAL_NAMESPACE}/{path}"
    if len(f"{registry}/{path}") > MAX_NAME_LENGTH:
        raise InvalidReference(
            f"invalid reference {original!r}: name longer than {MAX_NAME_LENGTH} characters"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)
