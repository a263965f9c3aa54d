"""Read settings from environment variables, strictly.

A typo in DEBUG or DATABASE_URL must stop the process at start with a message naming the
variable and the bad value, not quietly fall back to a default nobody asked for.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from layerhub.engine.blobstore import LOCAL, BlobsLocation, parse_blobs_url
from layerhub.engine.errors import InvalidReference
from layerhub.engine.reference import normalize_registry
from layerhub.engine.registry.mirrors import Mirror, parse_mirrors
from layerhub.engine.registry.proxies import ProxyConfig
from layerhub.engine.reserve import DEFAULT_RESERVE, StoreReserve

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
DATABASE_SCHEMES = frozenset({"sqlite", "postgres", "postgresql"})
REDIS_SCHEMES = frozenset({"redis", "rediss"})
DEV_SECRET_KEY = "django-insecure-layerhub-dev-only-never-use-in-production"


def _get(name: str, environ: Mapping[str, str] | None) -> str | None:
    return (os.environ if environ is None else environ).get(name)


def _redact(url: str) -> str:
    """The URL with any password replaced, so an error message can be logged safely."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def env_bool(name: str, default: bool, *, environ: Mapping[str, str] | None = None) -> bool:
    """A boolean: 1/0, true/false, yes/no, on/off (any case); anything else is an error."""
    raw = _get(name, environ)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(
        f"{name}={raw!r} is not a boolean: use one of 1/0, true/false, yes/no, on/off"
    )


def env_list(
    name: str, default: Sequence[str] = (), *, environ: Mapping[str, str] | None = None
) -> list[str]:
    """A comma-separated list; blanks around items and empty items are dropped.

    An item with whitespace inside is refused: it almost always means the list was separated
    with spaces, and silently taking "a b" as one host would lock everyone out.
    """
    raw = _get(name, environ)
    if raw is None:
        return list(default)
    items = [item.strip() for item in raw.split(",")]
    for item in items:
        if any(char.isspace() for char in item):
            raise ImproperlyConfigured(
                f"{name}={raw!r}: item {item!r} contains whitespace; separate items with commas"
            )
    return [item for item in items if item]


def _split_url(name: str, raw: str, schemes: Collection[str]) -> SplitResult:
    shown = _redact(raw)
    if not raw.strip():
        raise ImproperlyConfigured(f"{name} is set but empty")
    try:
        parts = urlsplit(raw.strip())
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={shown!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in schemes:
        expected = ", ".join(f"{scheme}://" for scheme in sorted(schemes))
        raise ImproperlyConfigured(
            f"{name}={shown!r} has scheme {parts.scheme or '(none)'!r}; expected one of {expected}"
        )
    return parts


def env_url(
    name: str,
    default: str,
    *,
    schemes: Collection[str],
    environ: Mapping[str, str] | None = None,
) -> str:
    """A URL whose scheme is one of ``schemes`` and whose port, if any, is a valid number."""
    raw = _get(name, environ)
    value = default if raw is None else raw
    _split_url(name, value, schemes)
    return value.strip()


def env_path(
    name: str, default: Path, *, base: Path, environ: Mapping[str, str] | None = None
) -> Path:
    """A filesystem path; a relative one is taken from ``base``.

    Resolving against a fixed base (not the working directory) keeps the web server and the
    workers on the same directory whichever folder they were started from.
    """
    raw = _get(name, environ)
    if raw is None:
        return default
    if not raw.strip():
        raise ImproperlyConfigured(f"{name} is set but empty")
    return (base / Path(raw.strip()).expanduser()).resolve()


_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


def env_seconds(
    name: str,
    default: float,
    *,
    maximum: float = 7 * 24 * 3600.0,
    environ: Mapping[str, str] | None = None,
) -> float:
    """A duration in seconds: a plain positive decimal ("10", "0.5"), at most ``maximum``.

    Only ASCII digits: ``float()`` would also take "inf", "1e9", "1_0" or Arabic-Indic digits,
    none of which anybody means as a timeout.
    """
    raw = _get(name, environ)
    if raw is None:
        return default
    text = raw.strip()
    if not _SECONDS.fullmatch(text):
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number of seconds (e.g. 10 or 0.5)")
    value = float(text)
    if not 0 < value <= maximum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be above 0 and at most {maximum:g}")
    return value


_COUNT = re.compile(r"[0-9]+", re.ASCII)


def env_count(
    name: str, default: int, *, maximum: int, environ: Mapping[str, str] | None = None
) -> int:
    """A count: a plain whole number of ASCII digits ("4"), from 1 to ``maximum``."""
    raw = _get(name, environ)
    if raw is None:
        return default
    text = raw.strip()
    if not _COUNT.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise ImproperlyConfigured(f"{name}={raw!r} must be a whole number from 1 to {maximum}")
    return int(text)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])", re.ASCII)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
OFF_WORDS = frozenset({"off", "never"})


def env_duration(
    name: str,
    default: timedelta | None,
    *,
    allow_off: bool = False,
    minimum: timedelta = timedelta(0),
    maximum: timedelta = timedelta(days=36500),
    environ: Mapping[str, str] | None = None,
) -> timedelta | None:
    """A duration with its unit: ``45s``, ``90m``, ``12h``, ``30d`` (a bare number is refused:
    "30" could be seconds or days); ``off`` (or ``never``) gives None where ``allow_off``.

    Between ``minimum`` and ``maximum`` inclusive.
    """
    raw = _get(name, environ)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in OFF_WORDS:
        if allow_off:
            return None
        raise ImproperlyConfigured(f"{name}={raw!r}: this period cannot be off")
    match = _DURATION.fullmatch(word)
    if match is None:
        off = ", or off" if allow_off else ""
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a duration: a number and a unit, e.g. 45s, 90m, 12h, 30d{off}"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or not minimum.total_seconds() <= seconds <= (
        maximum.total_seconds()
    ):
        raise ImproperlyConfigured(
            f"{name}={raw!r} must be between {_duration_text(minimum)} and "
            f"{_duration_text(maximum)}"
        )
    return timedelta(seconds=seconds)


def _duration_text(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit in ("d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def env_name(name: str, default: str, *, environ: Mapping[str, str] | None = None) -> str:
    """A name for a queue or key: letters, digits and ``. _ : -``, at most 100 characters."""
    raw = _get(name, environ)
    if raw is None:
        return default
    if not _NAME.fullmatch(raw.strip()):
        raise ImproperlyConfigured(
            f"{name}={raw!r}: use 1 to 100 letters, digits, '.', '_', ':' or '-'"
        )
    return raw.strip()


def env_database(
    name: str, default: str, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """A Django DATABASES entry from a sqlite:// or postgres:// URL."""
    url = env_url(name, default, schemes=DATABASE_SCHEMES, environ=environ)
    parts = urlsplit(url)
    if parts.scheme != "sqlite" and not parts.path.strip("/"):
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} names no database (the /<name> part)")
    try:
        # Keeping PostgreSQL connections open saves a connect per request; SQLite gains nothing.
        max_age = 0 if parts.scheme == "sqlite" else 60
        config = dj_database_url.parse(url, conn_max_age=max_age, conn_health_checks=max_age > 0)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={_redact(url)!r} is not usable: {exc}") from exc
    return dict(config)


def env_secret_key(name: str, *, debug: bool, environ: Mapping[str, str] | None = None) -> str:
    """The secret key; a fixed dev key is allowed only while DEBUG is on."""
    raw = _get(name, environ)
    if raw is None or not raw.strip():
        if debug:
            return DEV_SECRET_KEY
        raise ImproperlyConfigured(f"{name} must be set when DEBUG is off")
    if not debug and raw == DEV_SECRET_KEY:
        raise ImproperlyConfigured(f"{name} is the development key; set a real one")
    return raw


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", re.ASCII)
_PERCENT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*%", re.ASCII)


def parse_size(text: str) -> int:
    """Bytes from ``1073741824``, ``500M``, ``500MB`` (powers of 1000) or ``2GiB`` (of 1024).

    Raises ValueError on anything else.
    """
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size")
    value = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(value) or value >= 1 << 63:
        raise ValueError(f"{text!r} is too large")
    return int(value)


def env_size(name: str, default: int, *, environ: Mapping[str, str] | None = None) -> int:
    """A number of bytes: ``4096``, ``4K``, ``1MiB``."""
    raw = _get(name, environ)
    if raw is None:
        return default
    try:
        return parse_size(raw)
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a size: use bytes (4096) or a unit (4K, 1MiB)"
        ) from None


def env_blobs(name: str, *, environ: Mapping[str, str] | None = None) -> BlobsLocation:
    """Where blobs live: ``local`` (the store's ``blobs/``, the default) or
    ``s3://bucket/prefix``, whose endpoint, region and keys are the standard ``AWS_*``
    variables (read when the store is opened)."""
    raw = _get(name, environ)
    if raw is None:
        return LOCAL
    try:
        return parse_blobs_url(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None


def env_reserve(
    name: str,
    default: StoreReserve = DEFAULT_RESERVE,
    *,
    environ: Mapping[str, str] | None = None,
) -> StoreReserve:
    """Free space to keep on the store's file system: a size (``2GiB``, ``500M``,
    ``1073741824``; ``0`` for none) or a percentage of the file system (``5%``)."""
    raw = _get(name, environ)
    if raw is None:
        return default
    word = raw.strip()
    percent = _PERCENT.fullmatch(word)
    if percent is not None:
        value = float(percent.group(1))
        if value >= 100:
            raise ImproperlyConfigured(f"{name}={raw!r}: a reserve must be below 100%")
        return StoreReserve(percent=value)
    try:
        return StoreReserve(bytes=parse_size(word))
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a size or a percentage: use bytes (1073741824), "
            "a unit (500M, 2GiB) or a share of the disk (5%)"
        ) from None


def env_mirrors(
    name: str, *, environ: Mapping[str, str] | None = None
) -> dict[str, tuple[Mirror, ...]]:
    """Registry mirrors: ``docker.io=https://mirror.local,https://m2.local;ghcr.io=...``
    (registry, ``=``, mirror URLs tried in order; groups separated by ``;``)."""
    raw = _get(name, environ)
    if raw is None or not raw.strip():
        return {}
    try:
        return parse_mirrors(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={raw!r}: {exc}") from None


def env_registries(name: str, *, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A comma-separated list of registries (``host[:port]``, normalized as logins are) or
    CIDR ranges (``10.0.0.0/8``), as Docker's ``insecure-registries``."""
    out = []
    for item in env_list(name, environ=environ):
        if "/" in item:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ImproperlyConfigured(f"{name}: {item!r} is not a CIDR range") from None
            continue
        try:
            out.append(normalize_registry(item))
        except InvalidReference:
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not a registry host[:port] or a CIDR range"
            ) from None
    return tuple(out)


def env_proxies(*, environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lower-case spellings), as Docker and
    curl read them; a proxy URL that does not parse is an error naming the variable."""
    try:
        return ProxyConfig.from_environ(os.environ if environ is None else environ)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None
