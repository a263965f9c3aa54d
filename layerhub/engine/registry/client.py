"""The registry client's transport: auth, requests with retries, manifests and blob downloads.
See the package docstring for the whole picture."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..digest import sha256_bytes, validate_digest
from ..errors import (
    BlobUnknown,
    DigestMismatch,
    ManifestUnknown,
    RegistryAuthError,
    RegistryError,
    RegistryTimeout,
    RegistryUnavailable,
)
from ..manifest import ACCEPT, MAX_MANIFEST_BYTES
from ..store import ContentStore, Descriptor
from .limits import (
    READ_ERRORS,
    BodyTooLarge,
    Deadline,
    current_deadline,
    read_capped,
    watched_session,
)
from .scopes import merge_scopes
from .upload import CHUNK, BlobUploads, ProgressFn

USER_AGENT = "layerhub/0.1"
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
# what a registry's answers may weigh in memory (manifests have their own cap)
MAX_ERROR_BODY = 64 * 1024
MAX_TOKEN_BYTES = 1 << 20
# a small exchange (manifest, token, error body) must end within this; a blob transfer fails
# when no byte arrives for the stall timeout
DEFAULT_DEADLINE = 30.0
DEFAULT_STALL_TIMEOUT = 60.0


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


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    """Scheme, host and port of ``url`` (the port made explicit); None if malformed."""
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a malformed port
        return None
    return parts.scheme, parts.hostname, port


class RegistryClient(BlobUploads):
    """One registry host. Thread-safe: layers download concurrently through one client.

    ``timeout`` bounds connecting and each read of a small exchange; ``deadline`` bounds a
    whole small exchange (a manifest, a config read as a document, a token, an error body);
    ``stall_timeout`` is how long a blob transfer may go without a byte; ``retries`` and
    ``backoff`` shape the retries of transient failures (per request, and per blob for cut
    downloads).
    """

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool | None = None,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        deadline: float = DEFAULT_DEADLINE,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.insecure = is_loopback(host) if insecure is None else insecure
        self.base = f"{'http' if self.insecure else 'https'}://{host}"
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.stall_timeout = stall_timeout
        self._session = watched_session()
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
        """Answer a 401 challenge of this registry: remember basic auth or fetch a bearer token.

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
            raise RegistryAuthError(f"{self.host} asks for unsupported auth {challenge[:200]!r}")
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
        ``scope``.

        The registry named the realm in its own challenge, so it gets the registry's login
        (as Docker sends it); a redirect away from the realm's host does not.
        """
        query: dict[str, str | list[str]] = {"service": service}
        if scope:
            query["scope"] = merge_scopes(scope, challenged)
        login = None
        if self.credentials is not None:
            raw = f"{self.credentials.username}:{self.credentials.password}".encode()
            login = {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        realm_origin = _origin(realm)
        url = requests.Request("GET", realm, params=query).prepare().url or realm
        with Deadline(self.deadline) as deadline:
            try:
                for _hop in range(MAX_REDIRECTS + 1):
                    auth = login if login and _origin(url) == realm_origin else {}
                    reply = self._send("GET", url, headers=auth, timeout=self.timeout)
                    if reply.status_code not in _REDIRECTS or "Location" not in reply.headers:
                        break
                    reply.close()
                    url = urljoin(url, reply.headers["Location"])
                else:
                    raise RegistryAuthError(f"{self.host}: the token service redirects in a loop")
                with reply:
                    status = reply.status_code
                    body = read_capped(reply, MAX_TOKEN_BYTES) if status == 200 else b""
            except BodyTooLarge:
                raise RegistryAuthError(
                    f"{self.host}: the token service sent more than {MAX_TOKEN_BYTES} bytes"
                ) from None
            except READ_ERRORS as exc:
                if deadline.passed:
                    raise RegistryTimeout(
                        f"{self.host}: the token service {realm} did not answer within "
                        f"{deadline.seconds:g} s"
                    ) from None
                raise RegistryUnavailable(f"token service {realm} did not answer: {exc}") from exc
        if status in (401, 403):
            who = f"as {self.credentials.username!r}" if self.credentials else "anonymously"
            raise RegistryAuthError(f"{self.host}: the token service refused a token {who}")
        if status != 200:
            raise RegistryAuthError(f"{self.host}: the token service answered {status}")
        try:
            doc = json.loads(body)
            value = doc.get("token") or doc["access_token"]
        except (ValueError, KeyError, AttributeError):
            raise RegistryAuthError(f"{self.host}: the token service sent no token") from None
        if not isinstance(value, str) or not value:
            raise RegistryAuthError(f"{self.host}: the token service sent no token")
        lifetime = doc.get("expires_in") if isinstance(doc.get("expires_in"), int) else 60
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
        theirs = _origin(url)
        return theirs is not None and theirs == _origin(self.base)

    # -- requests ------------------------------------------------------------------------------

    def _send(
        self, method: str, url: str, *, headers: dict[str, str], timeout: float, **kwargs: Any
    ) -> requests.Response:
        """One HTTP exchange, headers only: the body is left for the caller to stream, and a
        redirect is returned, not followed."""
        return self._session.request(
            method,
            url,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=(self.timeout, timeout),
            **kwargs,
        )

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
        blob: bool = False,
        **kwargs: Any,
    ) -> requests.Response:
        """One API call with auth, redirects and retries; returns a response whose status is
        in ``ok``, its body not yet read (callers close it).

        ``path`` is an API path or an absolute URL (an upload location). Redirects are
        followed here, hop by hop: credentials go only to a hop on this registry's own
        origin, and only this registry's own 401 challenge is answered with its login (a
        storage host a blob is redirected to gets neither the login nor a token got with it).
        ``body`` makes a request body (a fresh one for each attempt): such a request is sent
        again after a 401 challenge is answered, but never retried on a transient failure,
        since the upload session it belongs to is then in an unknown state (the caller starts
        a new one). ``blob`` marks a transfer of blob bytes: its reads may wait up to the
        stall timeout; anything else runs under the small-exchange deadline.
        """
        del stream  # every response is streamed: nothing is read before it is bounded
        data = kwargs.pop("data", None)
        start = path if path.startswith("http") else self.base + path
        params = kwargs.pop("params", None)
        if params:  # in the first URL only: a redirect's Location is complete
            start = requests.Request("GET", start, params=params).prepare().url or start
        if body is not None and self._same_host(start):
            self._refresh_token(scope)
        read_timeout = self.stall_timeout if blob or body is not None else self.timeout
        attempt = 0
        answered = False
        url, verb, hops = start, method, 0
        while True:
            own = self._same_host(url)
            auth = self._auth_header(scope) if own else {}
            all_headers = {**(headers or {}), **auth}
            if verb != method:  # a 303 (or 301/302 after a POST) turned it into a bodyless GET
                kwargs["data"] = None
            elif body is not None:
                kwargs["data"] = body()
            else:
                kwargs["data"] = data
            # a request carrying a blob has no total deadline (only the stall timeout)
            deadline: AbstractContextManager[Deadline | None] = (
                Deadline(self.deadline) if body is None else nullcontext(None)
            )
            with deadline as watch:
                try:
                    response = self._send(
                        verb, url, headers=all_headers, timeout=read_timeout, **kwargs
                    )
                except (requests.ConnectionError, requests.Timeout) as exc:
                    if watch is not None and watch.passed:
                        raise RegistryTimeout(
                            f"{self.host}: {method} {path} got no answer within {watch.seconds:g} s"
                        ) from None
                    attempt += 1
                    if body is not None:
                        raise RegistryUnavailable(f"{self.host}: {method} failed: {exc}") from exc
                    if attempt > self.retries:
                        raise RegistryUnavailable(
                            f"{self.host} did not answer after {attempt} attempts: {exc}"
                        ) from exc
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    url, verb, hops = start, method, 0
                    continue
                status = response.status_code
                if status in _REDIRECTS and status not in ok:
                    response.close()
                    location = response.headers.get("Location")
                    hops += 1
                    if not location:
                        raise RegistryError(f"{self.host}: redirect ({status}) without a Location")
                    if hops > MAX_REDIRECTS:
                        raise RegistryError(
                            f"{self.host}: more than {MAX_REDIRECTS} redirects for {method} {path}"
                        )
                    url = urljoin(url, location)
                    if status == 303 or (status in (301, 302) and verb not in ("GET", "HEAD")):
                        verb = "GET"  # what browsers, requests and Go do
                    continue
                if status == 401 and not own:
                    response.close()
                    raise RegistryAuthError(
                        f"{self.host} sent the request on to {urlsplit(url).netloc}, which asks "
                        f"for a login: {self.host}'s credentials are not sent to another host"
                    )
                if status == 401 and not answered:
                    answered = True
                    response.close()
                    self._authenticate(response, scope, auth.get("Authorization", ""))
                    url, verb, hops = start, method, 0
                    continue
                if status in ok:
                    return response
                if status in _TRANSIENT_STATUS and attempt < self.retries and body is None:
                    attempt += 1
                    response.close()
                    time.sleep(self.backoff * 2 ** (attempt - 1))
                    url, verb, hops = start, method, 0
                    continue
                raise self._error(response)

    def _error(self, response: requests.Response) -> Exception:
        """A typed error carrying the registry's own words (from at most MAX_ERROR_BODY bytes
        of its answer, read within the deadline: an endless or trickled body is cut)."""
        code, message = "", ""
        with response, Deadline(self.deadline) as deadline:
            deadline.watch(response)
            try:
                raw = read_capped(response, MAX_ERROR_BODY)
            except (BodyTooLarge, *READ_ERRORS):
                raw = b""
        try:
            errors = json.loads(raw).get("errors") or []
            if errors and isinstance(errors, list) and isinstance(errors[0], dict):
                code = str(errors[0].get("code", ""))[:100]
                message = str(errors[0].get("message", ""))[:500]
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
        The whole exchange (token included) must end within the deadline.
        """
        what = f"the manifest {repository}:{reference}"
        with Deadline(self.deadline) as deadline:
            response = self._request(
                "GET",
                f"/v2/{repository}/manifests/{reference}",
                scope=f"repository:{repository}:pull",
                headers={"Accept": ACCEPT},
            )
            with response:
                deadline.watch(response)
                try:
                    data = read_capped(response, MAX_MANIFEST_BYTES)
                except BodyTooLarge:
                    raise RegistryError(
                        f"{self.host}: {what} is larger than {MAX_MANIFEST_BYTES} bytes"
                    ) from None
                except READ_ERRORS as exc:
                    if deadline.passed:
                        raise self._too_slow(what, deadline) from None
                    raise RegistryUnavailable(f"{self.host}: reading {what} failed: {exc}") from exc
                if deadline.passed:  # a body without a length, cut by the watchdog
                    raise self._too_slow(what, deadline)
        digest = sha256_bytes(data)
        if reference.startswith("sha256:") and digest != reference:
            raise DigestMismatch(reference, digest, f"manifest {repository}@{reference}")
        announced = response.headers.get("Docker-Content-Digest")
        if announced and announced.startswith("sha256:") and announced != digest:
            raise DigestMismatch(announced, digest, f"manifest {repository}:{reference}")
        return data, response.headers.get("Content-Type", ""), digest

    def _too_slow(self, what: str, deadline: Deadline) -> RegistryTimeout:
        return RegistryTimeout(
            f"{self.host}: {what} did not arrive within {deadline.seconds:g} s "
            "(the registry sends too slowly or stalled)"
        )

    def fetch_blob(
        self,
        repository: str,
        digest: str,
        size: int | None,
        blobs: ContentStore,
        progress: ProgressFn | None = None,
        *,
        small: bool = False,
    ) -> Descriptor:
        """Stream a blob into the content store, verified; resume with Range if cut off.

        Cuts, stalls (no byte for ``stall_timeout``) and a registry that ignores the Range
        count against one budget per blob (``retries``), so a registry that keeps failing
        ends the download with a typed error however it fails. A ``small`` blob (a config)
        is a document: the whole download must end within the deadline.
        """
        if small:
            with Deadline(self.deadline) as deadline:
                try:
                    return self._fetch_blob(repository, digest, size, blobs, progress)
                except RegistryUnavailable:
                    if deadline.passed:
                        raise self._too_slow(f"blob {digest}", deadline) from None
                    raise
        return self._fetch_blob(repository, digest, size, blobs, progress)

    def _fetch_blob(
        self,
        repository: str,
        digest: str,
        size: int | None,
        blobs: ContentStore,
        progress: ProgressFn | None,
    ) -> Descriptor:
        validate_digest(digest)
        scope = f"repository:{repository}:pull"
        path = f"/v2/{repository}/blobs/{digest}"
        cuts = 0

        def another_try(reason: str) -> None:
            nonlocal cuts
            cuts += 1
            if cuts > self.retries:
                error = RegistryTimeout if "no data" in reason else RegistryUnavailable
                raise error(
                    f"{self.host}: download of {digest} kept failing ({cuts} attempts): {reason}"
                )
            time.sleep(self.backoff * 2 ** (cuts - 1))

        writer = blobs.writer(digest, size)
        try:
            while True:
                offset = writer.size
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                response = self._request(
                    "GET", path, scope=scope, headers=headers, ok=(200, 206), blob=True
                )
                with response:
                    if offset and response.status_code == 200:
                        # the server ignored the Range: this answer starts at the first byte
                        writer.abort()
                        writer = blobs.writer(digest, size)
                        cuts += 1
                        if cuts > self.retries:
                            raise RegistryUnavailable(
                                f"{self.host}: download of {digest} was cut {cuts} times and "
                                "the registry will not resume it (it ignores Range requests)"
                            )
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
                        outer = current_deadline()
                        if outer is not None and outer.passed:
                            raise self._too_slow(f"blob {digest}", outer) from None
                        stalled = any(
                            isinstance(a, urllib3.exceptions.ReadTimeoutError) for a in exc.args
                        )
                        another_try(
                            f"no data for {self.stall_timeout:g} s" if stalled else str(exc)
                        )
                        continue
                if size is not None and writer.size < size:
                    another_try(f"the body stopped at {writer.size} of {size} bytes")
                    continue
                return writer.commit()
        finally:
            if writer.descriptor is None:
                writer.abort()

    @contextmanager
    def open_blob(self, repository: str, digest: str) -> Iterator[requests.Response]:
        """A streaming response for a blob (for callers that verify it themselves)."""
        response = self._request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scope=f"repository:{repository}:pull",
            blob=True,
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
