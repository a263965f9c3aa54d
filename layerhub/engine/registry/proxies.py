"""HTTP(S) proxies as Docker and Go's ``net/http`` take them from the environment:
``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http ones (upper case first, then lower),
``NO_PROXY`` for the hosts that bypass them. A loopback host never goes through a proxy.

NO_PROXY entries (comma-separated) as Go reads them: ``*`` (no proxy at all), an IP address,
a CIDR range (``10.0.0.0/8``), a domain (``example.com``: it and its subdomains), a domain
with a leading dot or ``*.`` (``.example.com``: subdomains only), each optionally with a
port (then only that port matches).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .hosts import is_loopback, split_host

PROXY_SCHEMES = ("http", "https")


def _environ(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name.upper()) or environ.get(name.lower()) or "").strip()


def parse_proxy_url(name: str, raw: str) -> str | None:
    """A proxy URL as given in ``name`` (``proxy:3128`` is ``http://proxy:3128``); None when
    empty. Raises ValueError, naming the variable, for anything else."""
    text = raw.strip()
    if not text:
        return None
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise ValueError(f"{name}={_redact(raw)!r} is not a valid proxy URL: {exc}") from None
    if parts.scheme not in PROXY_SCHEMES:
        raise ValueError(
            f"{name}={_redact(raw)!r}: proxy scheme {parts.scheme!r} is not supported "
            "(use http:// or https://)"
        )
    if not parts.hostname:
        raise ValueError(f"{name}={_redact(raw)!r} names no proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{name}={_redact(raw)!r}: a proxy URL has no path or query")
    return text


def _redact(url: str) -> str:
    try:
        password = urlsplit(url if "://" in url else "http://" + url).password
    except ValueError:
        return url
    return url.replace(f":{password}@", ":***@", 1) if password else url


@dataclass(frozen=True)
class ProxyConfig:
    """The proxies registry requests go through, and the hosts that bypass them."""

    http: str | None = None
    https: str | None = None
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxyConfig:
        """Read HTTPS_PROXY, HTTP_PROXY and NO_PROXY (or their lower-case spellings);
        raises ValueError naming the variable on a bad URL."""
        return cls(
            http=parse_proxy_url("HTTP_PROXY", _environ(environ, "HTTP_PROXY")),
            https=parse_proxy_url("HTTPS_PROXY", _environ(environ, "HTTPS_PROXY")),
            no_proxy=tuple(
                item.strip().lower()
                for item in _environ(environ, "NO_PROXY").split(",")
                if item.strip()
            ),
        )

    def for_url(self, url: str) -> str | None:
        """The proxy a request to ``url`` goes through, or None to go direct."""
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or not parts.netloc:
            return None
        host = parts.netloc.rpartition("@")[2]
        if is_loopback(host) or self.bypasses(host, parts.scheme):
            return None
        return proxy

    def bypasses(self, host: str, scheme: str = "https") -> bool:
        """Whether NO_PROXY names ``host[:port]``."""
        name, port = split_host(host.lower(), 443 if scheme == "https" else 80)
        address = _ip(name)
        for entry in self.no_proxy:
            if entry == "*":
                return True
            if "/" in entry:
                try:
                    network = ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    continue
                if address is not None and address in network:
                    return True
                continue
            want_name, want_port = split_host(entry, 0)
            if want_port and want_port != port:
                continue
            want_ip = _ip(want_name)
            if want_ip is not None or address is not None:
                if want_ip == address:
                    return True
                continue
            if want_name.startswith("*."):
                want_name = want_name[1:]
            if want_name.startswith("."):
                if name.endswith(want_name):
                    return True
            elif name == want_name or name.endswith("." + want_name):
                return True
        return False

    def requests_proxies(self, url: str) -> dict[str, str]:
        """The ``proxies`` argument requests takes for ``url``."""
        proxy = self.for_url(url)
        return {urlsplit(url).scheme: proxy} if proxy else {}

    def describe(self, url: str) -> str:
        """The proxy for ``url``, its password hidden, for messages."""
        proxy = self.for_url(url)
        return _redact(proxy) if proxy else "none"


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return None
