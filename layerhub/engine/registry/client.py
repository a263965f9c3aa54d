"""The registry client's transport: auth, requests with retries, manifests and blob downloads.
See the package docstring for the whole picture."""

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
from urllib.parse import urlsplit

import requests

from ..digest import sha256_bytes, validate_digest
from ..errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    RegistryAuthError,
    RegistryError,
    RegistryUnavailable,
)
from ..manifest import ACCEPT, MAX_MANIFEST_BYTES
from ..store import ContentStore, Descriptor
from .scopes import merge_scopes
from .upload import CHUNK, BlobUploads, ProgressFn

USER_AGENT = "layerhub/0.1"
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_DEFAULT_PORTS = {"http": 80, "https": 443}


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


class RegistryClient(BlobUploads):
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
        self._bearer: tuple[str, str] | None = None  # realm and service of the last challenge
        self._basic = False  # the registry asked for basic auth
        self._lock = threading.Lock()
        # one token fetch at a time: concurrent requests meeting the same challenge share it
        self._token_lock = threading.Lock()

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

    def _authenticate(self, response: requests.Response, scope: str, sent: str = "") -> None:
        """Answer a 401 challenge: remember basic auth or fetch a bearer token.

        ``sent`` is the Authorization the refused request carried: credentials refused are
        an error, while a request that went out before another thread authenticated just
        uses what that thread got.
        """
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.credentials is None:
                raise RegistryAuthError(
                    f"{self.host} requires a login (HTTP basic): add credentials for it"
                )
            if sent.startswith("Basic "):
                raise RegistryAuthError(
                    f"{self.host} refused the credentials of {self.credentials.username!r}"
                )
            with self._lock:
                self._basic = True
            return
        if scheme != "bearer":
            raise RegistryAuthError(f"{self.host} asks for unsupported auth {challenge!r}")
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.get("realm")
        if not realm:
            raise RegistryAuthError(f"{self.host}: bearer challenge without a realm")
        service = params.get("service", "")
        with self._lock:
            self._bearer = (realm, service)
        with self._token_lock:
            current = self._auth_header(scope).get("Authorization", "")
            if current.startswith("Bearer ") and current != sent:
                return  # another request got a token for this scope meanwhile
            self._fetch_token(realm, service, scope, params.get("scope", ""))

    def _fetch_token(self, realm: str, service: str, scope: str, challenged: str = "") -> None:
        """Get a token for ``scope`` (and what the challenge asked for) and cache it under
        ``scope``."""
        query: dict[str, str | list[str]] = {"service": service}
        if scope:
            query["scope"] = merge_scopes(scope, challenged)
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

    def _refresh_token(self, scope: str) -> None:
        """Fetch a token before a request whose body cannot wait for a 401: a registry
        answering 401 early may close the connection while the body is still being sent."""
        with self._token_lock:
            with self._lock:
                bearer = self._bearer
                token = self._tokens.get(scope)
                fresh = token is not None and token.expires > time.monotonic()
            if bearer is not None and scope and not fresh:
                self._fetch_token(*bearer, scope)

    def _same_host(self, url: str) -> bool:
        """Whether ``url`` points at this registry (credentials go nowhere else)."""
        ours, theirs = urlsplit(self.base), urlsplit(url)
        try:
            return (
                theirs.scheme == ours.scheme
                and theirs.hostname == ours.hostname
                and (theirs.port or _DEFAULT_PORTS.get(theirs.scheme))
                == (ours.port or _DEFAULT_PORTS.get(ours.scheme))
            )
        except ValueError:  # a malformed port
            return False

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
        body: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One API call with auth and retries; returns a response whose status is in ``ok``.

        ``path`` is an API path or an absolute URL (an upload location); credentials are only
        sent to this registry. ``body`` makes a request body (a fresh one for each attempt):
        such a request is sent again after a 401 challenge is answered, but never retried on
        a transient failure, since the upload session it belongs to is then in an unknown
        state (the caller starts a new one).
        """
        url = path if path.startswith("http") else self.base + path
        own = self._same_host(url)
        if body is not None and own:
            self._refresh_token(scope)
        attempt = 0
        authenticated = False
        while True:
            auth = self._auth_header(scope) if own else {}
            all_headers = {**(headers or {}), **auth}
            if body is not None:
                kwargs["data"] = body()
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
                if body is not None:
                    raise RegistryUnavailable(f"{self.host}: {method} failed: {exc}") from exc
                if attempt > self.retries:
                    raise RegistryUnavailable(
                        f"{self.host} did not answer after {attempt} attempts: {exc}"
                    ) from exc
                time.sleep(self.backoff * 2 ** (attempt - 1))
                continue
            if response.status_code == 401 and not authenticated and own:
                authenticated = True
                response.close()
                self._authenticate(response, scope, auth.get("Authorization", ""))
                continue
            if response.status_code in ok:
                return response
            if (
                response.status_code in _TRANSIENT_STATUS
                and attempt < self.retries
                and body is None
            ):
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

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
