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

Plain HTTP is used only for registries marked insecure; loopback registries are insecure
by default, as Docker treats them.
"""

from __future__ import annotations

from .client import Credentials, RegistryClient, is_loopback
from .scopes import merge_scopes, push_scope
from .upload import ProgressFn, UploadSession

__all__ = [
    "Credentials",
    "ProgressFn",
    "RegistryClient",
    "UploadSession",
    "is_loopback",
    "merge_scopes",
    "push_scope",
]
