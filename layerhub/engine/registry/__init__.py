"""A client for the OCI distribution API: what ``docker pull`` and ``docker push`` speak.

- ``/v2/`` ping, manifests by tag or digest with the right Accept header, blobs streamed into
  the content store with digest verification;
- redirects followed hop by hop by the client itself: credentials go only to the registry's
  own origin, and a 401 from a host the registry redirected to (blob storage) is an error,
  never answered with the registry's login or a token got with it;
- every answer bounded (limits.py): bodies read through a cap (manifests 4 MiB, configs
  8 MiB, tokens 1 MiB, error bodies 64 KiB), small exchanges (manifests, configs, tokens,
  error bodies) under a total deadline, blob transfers failing after a stall period, and
  a retry budget per blob rather than per request;
- auth: anonymous, HTTP basic, and the bearer-token flow (a 401 with
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``; the token is fetched, with the
  registry's credentials if any, and reused until it expires);
- an interrupted blob download resumes with a Range request; transient failures (connection
  errors, 429, 5xx) are retried with exponential backoff; everything else fails at once with
  a typed error saying what the registry said;
- pushing: blob existence checks, upload sessions (monolithic or chunked, streamed from the
  content store), cross-repository mounts and manifest uploads. A token is asked for every
  scope a request needs at once (``repository:team/app:pull,push repository:team/base:pull``
  for a mount), each scope as its own ``scope`` parameter, as Docker does.

- TLS as Docker does it (tls.py): HTTPS first for every registry, loopback included; plain
  HTTP only when the port speaks it and the registry is on loopback or marked insecure; the
  OS trust store plus a certs.d directory per host (extra CAs, client certificates); a
  certificate for another name, an expired one or one from an unknown authority is an error
  naming the host and the reason;
- proxies from HTTPS_PROXY, HTTP_PROXY and NO_PROXY (proxies.py), loopback never proxied;
- mirrors tried before the registry for pulls, as containerd's hosts.toml (mirrors.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Credentials, RegistryClient, SourceFn
    from .mirrors import Mirror, parse_mirrors
    from .proxies import ProxyConfig
    from .scopes import merge_scopes, push_scope
    from .tls import TLSConfig, TLSState, describe_tls, is_loopback
    from .upload import ProgressFn, UploadSession

# Each name below is loaded on first use from the module that defines it: reading the
# settings needs mirrors.py and proxies.py alone, not the HTTP client (requests) and TLS
# (the trust store, cryptography) that talking to a registry needs. Every process reads the
# settings first; a command such as ``manage.py pull`` never talks to a registry itself.
_HOME = {
    "Credentials": "client",
    "RegistryClient": "client",
    "SourceFn": "client",
    "Mirror": "mirrors",
    "parse_mirrors": "mirrors",
    "ProxyConfig": "proxies",
    "merge_scopes": "scopes",
    "push_scope": "scopes",
    "TLSConfig": "tls",
    "TLSState": "tls",
    "describe_tls": "tls",
    "is_loopback": "tls",
    "ProgressFn": "upload",
    "UploadSession": "upload",
}

__all__ = [
    "Credentials",
    "Mirror",
    "ProgressFn",
    "ProxyConfig",
    "RegistryClient",
    "SourceFn",
    "TLSConfig",
    "TLSState",
    "UploadSession",
    "describe_tls",
    "is_loopback",
    "merge_scopes",
    "parse_mirrors",
    "push_scope",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value
