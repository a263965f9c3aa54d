"""A client for the OCI distribution API: what ``docker pull`` and ``docker push`` speak.

- ``/v2/`` ping, manifests by tag or digest with the right Accept header, blobs streamed into
  the content store with digest verification, redirects followed (credentials are not sent to
  another host);
- auth: anonymous, HTTP basic, and the bearer-token flow (a 401 with
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=...``; the token is fetched, with the
  registry's credentials if any, and reused until it expires);
- an interrupted blob download resumes with a Range request; transient failures (connection
  errors, 429, 5xx) are retried with exponential backoff; everything else fails at once with
  a typed error saying what the registry said.

Plain HTTP is used only for registries marked insecure; loopback registries are insecure
by default, as Docker treats them.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests

from .digest import sha256_bytes, validate_digest
from .errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from .manifest import ACCEPT, MAX_MANIFEST_BYTES
from .store import ContentStore, Descriptor

USER_AGENT = "layerhub/0.1"
CHUNK = 1 << 20
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


@dataclass(frozen=True)
class Credentials:
    """A registry login. Never logged, never shown back."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class _Token:
    value: str
    expires: float


ProgressFn = Callable[[int], None]


class RegistryClient:
    """One registry host. Thread-safe: layers download concurrently through one client."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.insecure = is_loopback(host) if insecure is None else insecure
        self.base = f"{'http' if self.insecure else 'https'}://{host}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._tokens: dict[str, _Token] = {}
        self._basic = False  # the registry asked for basic auth
        self._lock = threading.Lock()

    # -- auth ----------------------------------------------------------------------------------

    def _auth_header(self, scope: str) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get(scope)
            if token is not None and token.expires > time.monotonic():
                return {"Authorization": f"Bearer {token.value}"}
            if self._basic and self.credentials is not None:
                raw = f"{self.credentials.username}:{self.credentials.password}".encode()
                return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _authenticate(self, response: requests.Response, scope: str) -> None:
        """Answer a 401 challenge: remember basic auth or fetch a bearer token."""
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(
                    f"{self.host} requires a login (HTTP basic): add credentials for it"
                )
            with self._lock:
                if self._basic:
                    raise RegistryAuthError(
                        f"{self.host} refused the credentials of {self.credentials.username!r}"
                    )
                self._basic = True
            return
        if scheme != "bearer":
            raise RegistryAuthError(f"{self.host} asks for unsupported auth {challenge!r}")
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{self.host}: bearer challenge without a realm")
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = params.get("scope") or scope
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        try:
            reply = self._session.get(realm, params=query, auth=auth, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RegistryUnavailable(f"token service {realm} did not answer: {exc}") from exc
        if reply.status_code in (401, 403):
            who = f"as {self.credentials.username!r}" if self.credentials else "anonymously"
            raise RegistryAuthError(f"{self.host}: the token service refused a token {who}")
        if reply.status_code != 200:
            raise RegistryAuthError(f"{self.host}: the token service answered {reply.status_code}")
        try:
            body = reply.json()
            value = body.get("token") or body["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryAuthError(f"{self.host}: the token service sent no token") from None
        lifetime = body.get("expires_in") if isinstance(body.get("expires_in"), int) else 60
        with self._lock:
            # renew a little early so a token never expires mid-request
            self._tokens[scope] = _Token(value, time.monotonic() + max(lifetime - 10, 1))

    # -- requests ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        scope: str,
        headers: dict[str, str] | None = None,
        stream: bool = False,
        ok: tuple[int, ...] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        """One API call with auth and retries; returns a response whose status is in ``ok``."""
        url = path if path.startswith("http") else self.base + path
        attempt = 0
        authenticated = False
        while True:
            all_headers = {**(headers or {}), **self._auth_header(scope)}
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=all_headers,
                    stream=stream,
                    timeout=self.timeout,
                    **kwargs,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                attempt += 1
                if attempt > self.retries:
                    raise RegistryUnavailable(
                        f"{self.host} did not answer after {attempt} attempts: {exc}"
                    ) from exc
                time.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if response.status_code == 401 and not authenticated:
                authenticated = True
                response.close()
                self._authenticate(response, scope)
                continue
            if response.status_code in ok:
                return response
            if response.status_code in _TRANSIENT_STATUS and attempt < self.retries:
                attempt += 1
                response.close()
                time.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            raise self._error(response)

    def _error(self, response: requests.Response) -> Exception:
        """A typed error carrying the registry's own words."""
        code, message = "", ""
        try:
            errors = response.json().get("errors") or []
            if errors:
                code = str(errors[0].get("code", ""))
                message = str(errors[0].get("message", ""))
        except (ValueError, AttributeError):
            pass
        status = response.status_code
        said = f"{message} ({code})" if code else f"HTTP {status}"
        if status == 401 or code in ("UNAUTHORIZED", "DENIED") or status == 403:
            return RegistryAuthError(f"{self.host}: access denied: {said}")
        if code in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN") or (
            status == 404 and "/manifests/" in response.url
        ):
            return ManifestUnknown(f"{self.host}: not found: {said}")
        if code == "BLOB_UNKNOWN" or status == 404:
            return BlobUnknown(f"{self.host}: not found: {said}")
        if status in _TRANSIENT_STATUS:
            return RegistryUnavailable(f"{self.host} failed: {said}")
        return RegistryError(f"{self.host} refused the request: {said}")

    # -- API -----------------------------------------------------------------------------------

    def login(self) -> None:
        """Check the credentials: ``/v2/`` must answer once authenticated.

        A token service is asked for a token with no repository scope, as ``docker login``
        does; a registry with no auth at all accepts any login.
        """
        self._request("GET", "/v2/", scope="").close()

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest: (bytes, content type, digest).

        Fetched by digest, the bytes must hash to it; fetched by tag, the digest is computed
        from the bytes (and must match the registry's Docker-Content-Digest if it sends one).
        """
        response = self._request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            scope=f"repository:{repository}:pull",
            headers={"Accept": ACCEPT},
            stream=True,
        )
        with response:
            data = response.raw.read(MAX_MANIFEST_BYTES + 1, decode_content=True)
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"{self.host}: manifest larger than 4 MiB")
        digest = sha256_bytes(data)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(reference, digest, f"manifest {repository}@{reference}")
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(announced, digest, f"manifest {repository}:{reference}")
        return data, response.headers.get("Content-Type", ""), digest

    def fetch_blob(
        self,
        repository: str,
        digest: str,
        size: int | None,
        blobs: ContentStore,
        progress: ProgressFn | None = None,
    ) -> Descriptor:
        """Stream a blob into the content store, verified; resume with Range if cut off."""
        validate_digest(digest)
        scope = f"repository:{repository}:pull"
        path = f"/v2/{repository}/blobs/{digest}"
        cuts = 0
        with blobs.writer(digest, size) as writer:
            while True:
                headers = {"Range": f"bytes={writer.size}-"} if writer.size else {}
                response = self._request(
                    "GET", path, scope=scope, headers=headers, stream=True, ok=(200, 206)
                )
                with response:
                    if writer.size and response.status_code == 200:
                        # the server ignored the Range: start over from the first byte
                        writer.abort()
                        return self.fetch_blob(repository, digest, size, blobs, progress)
                    try:
                        for chunk in response.iter_content(CHUNK):
                            writer.write(chunk)
                            if progress is not None:
                                progress(writer.size)
                    except (
                        requests.ConnectionError,
                        requests.Timeout,
                        requests.exceptions.ChunkedEncodingError,
                    ) as exc:
                        cuts += 1
                        if cuts > self.retries:
                            raise RegistryUnavailable(
                                f"{self.host}: download of {digest} kept failing: {exc}"
                            ) from exc
                        time.sleep(self.backoff * 2 ** (cuts - 1))
                        continue
                if size is not None and writer.size < size:
                    cuts += 1
                    if cuts > self.retries:
                        raise RegistryUnavailable(
                            f"{self.host}: download of {digest} stopped at {writer.size} "
                            f"of {size} bytes"
                        )
                    continue
                return writer.commit()

    @contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[requests.Response]:
        """A streaming response for a blob (for callers that verify it themselves)."""
        response = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=f"repository:{repository}:pull",
            stream=True,
        )
        with response:
            yield response

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()
