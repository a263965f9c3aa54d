"""The registry client's transport: auth, requests with retries, manifests and blob downloads.
See the package docstring for the whole picture."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
    RegistryTLSError,
    RegistryUnavailable,
    SizeMismatch,
)
from ..manifest import ACCEPT, MAX_MANIFEST_BYTES
from ..store import BlobSink, Descriptor
from .limits import (
    READ_ERRORS,
    BodyTooLarge,
    Deadline,
    current_deadline,
    read_capped,
)
from .proxies import ProxyConfig
from .scopes import merge_scopes
from .tls import (
    TLSConfig,
    certificate_error,
    client_certificate_error,
    is_loopback,
    peer_certificate,
    split_host,
    tls_failure,
)
from .transport import registry_session
from .upload import CHUNK, BlobUploads, ProgressFn

log = logging.getLogger("layerhub.registry")

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


# what makes a pull leave a mirror for the next one (or the registry itself)
_MIRROR_FALLBACK = (RegistryError, DigestMismatch, SizeMismatch)
SourceFn = Callable[[str], None]


def _refused(exc: BaseException) -> bool:
    """Whether a connection error is a refused connection (nothing listens on the port)."""
    seen = 0
    todo: list[object] = [exc]
    while todo and seen < 32:
        current = todo.pop()
        seen += 1
        if isinstance(current, ConnectionRefusedError):
            return True
        if isinstance(current, BaseException):
            todo.extend(a for a in current.args if isinstance(a, BaseException))
            todo.extend(
                v
                for v in (getattr(current, "reason", None), current.__cause__, current.__context__)
                if v is not None
            )
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

    HTTPS comes first, as Docker does it: a loopback host, or one marked ``insecure`` (a
    login's ``--insecure``, LAYERHUB_INSECURE_REGISTRIES), falls back to plain HTTP when its
    port turns out to speak it (the TLS handshake fails at once, so this costs a round
    trip), and only one marked insecure may be used with a certificate that fails
    verification (logged as a warning). ``scheme`` fixes the scheme instead (a mirror written
    ``http://``). ``tls`` says what is trusted (the OS trust store and a certs.d directory),
    ``proxies`` which proxy a request goes through (the environment's by default).
    ``mirrors`` are clients tried first for manifests and blobs, in order (mirrors.py).
    """

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool | None = False,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        deadline: float = DEFAULT_DEADLINE,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        tls: TLSConfig | None = None,
        proxies: ProxyConfig | None = None,
        mirrors: Sequence[RegistryClient] = (),
        scheme: str | None = None,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self.insecure = bool(insecure)
        self.plain_http_allowed = self.insecure or is_loopback(host)
        if scheme not in (None, "http", "https"):
            raise ValueError(f"scheme {scheme!r}: http or https")
        self.base = f"{scheme or 'https'}://{host}"
        # the scheme is settled by a fixed scheme, or by the first answer over HTTPS
        self._settled = scheme is not None
        self._unverified = False  # an insecure registry whose certificate failed
        self.tls = tls if tls is not None else TLSConfig()
        self.proxies = proxies if proxies is not None else ProxyConfig.from_environ(os.environ)
        self.mirrors = list(mirrors)
        self._mirrors_down: set[str] = set()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.deadline = deadline
        self.stall_timeout = stall_timeout
        self._session = registry_session(self.tls)
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
                tls_error = self._tls_error(exc, url)
                if tls_error is not None:
                    raise RegistryTLSError(f"token service of {self.host}: {tls_error}") from None
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
        redirect is returned, not followed. Through the proxy the URL's host takes, if any;
        unverified only to this registry once it is known insecure with a bad certificate."""
        return self._session.request(
            method,
            url,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=(self.timeout, timeout),
            proxies=self.proxies.requests_proxies(url),
            verify=not (self._unverified and self._same_host(url)),
            **kwargs,
        )

    # -- HTTPS first -----------------------------------------------------------------------------

    def _fall_back(self, exc: BaseException, url: str) -> bool:
        """After a failed exchange with this registry over HTTPS, before its scheme is
        settled: switch to plain HTTP (the port speaks it, or nothing listens on the HTTPS
        port and HTTP has another) or to unverified TLS (marked insecure, bad certificate)
        where that is allowed. True if the request should be sent again at once."""
        if not url.startswith("https://") or urlsplit(url).netloc.lower() != self.host.lower():
            return False
        found = tls_failure(exc)
        kind = found[0] if found else None
        port = split_host(self.host, 0)[1]
        with self._lock:
            if self.base.startswith("http://"):
                return True  # another request (a concurrent upload) fell back meanwhile
            settled = self._settled
        plain = kind == "plain-http" or (_refused(exc) and not port)
        if self.plain_http_allowed and plain and not settled:
            with self._lock:
                self.base = f"http://{self.host}"
                self._settled = True
            log.info("%s: no HTTPS there, using plain HTTP", self.host)
            return True
        if kind == "certificate" and self.insecure and not self._unverified:
            with self._lock:
                self._unverified = True
            error = self._tls_error(exc, url)
            log.warning(
                "%s is marked insecure: using it over TLS without verifying its certificate (%s)",
                self.host,
                error,
            )
            return True
        return False

    def _tls_error(self, exc: BaseException, url: str) -> RegistryTLSError | None:
        """The error to raise for a TLS failure talking to ``url``'s host, or None when
        ``exc`` is not one worth stopping for (a transient failure is retried instead)."""
        found = tls_failure(exc)
        if found is None:
            return None
        kind, error = found
        host = urlsplit(url).netloc.rpartition("@")[2]
        if kind == "certificate" and isinstance(error, ssl.SSLCertVerificationError):
            direct = self.proxies.for_url(url) is None
            peer = peer_certificate(host, min(self.timeout, 5.0)) if direct else None
            return certificate_error(host, error, peer, self.tls.certs_dir)
        if kind == "client-certificate":
            return client_certificate_error(host, error, self.tls.certs(host), self.tls.certs_dir)
        if kind == "plain-http":
            return RegistryTLSError(
                f"{host} answers plain HTTP, not HTTPS: if that is intended, log in with "
                "--insecure or list it in LAYERHUB_INSECURE_REGISTRIES"
            )
        return None

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
        params = kwargs.pop("params", None)

        def first_url() -> str:  # again after a fall back to plain HTTP
            start = path if path.startswith("http") else self.base + path
            if params:  # in the first URL only: a redirect's Location is complete
                start = requests.Request("GET", start, params=params).prepare().url or start
            return start

        start = first_url()
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
                    if self._fall_back(exc, url):
                        start = first_url()
                        url, verb, hops = start, method, 0
                        continue
                    tls_error = self._tls_error(exc, url)
                    if tls_error is not None:
                        raise tls_error from None
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
                if own and not self._settled:
                    self._settled = True  # this registry speaks HTTPS: no fallback from now on
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

    def _mirrors_up(self) -> list[RegistryClient]:
        with self._lock:
            return [m for m in self.mirrors if m.host not in self._mirrors_down]

    def _mirror_failed(self, mirror: RegistryClient, what: str, exc: Exception) -> None:
        """Note why a mirror did not serve ``what``; one that is down is not asked again by
        this client (a pull does not wait for a dead mirror once per layer)."""
        if isinstance(exc, RegistryUnavailable):
            with self._lock:
                self._mirrors_down.add(mirror.host)
        log.info("mirror %s did not serve %s (%s); trying the next source", mirror.host, what, exc)

    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest: (bytes, content type, digest), from the
        first mirror that has it, else from this registry (see ``_get_manifest_here``)."""
        for mirror in self._mirrors_up():
            try:
                return mirror._get_manifest_here(repository, reference)
            except _MIRROR_FALLBACK as exc:
                self._mirror_failed(mirror, f"{repository}:{reference}", exc)
        return self._get_manifest_here(repository, reference)

    def _get_manifest_here(self, repository: str, reference: str) -> tuple[bytes, str, str]:
        """A manifest or index by tag or digest from this host: (bytes, content type, digest).

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
        blobs: BlobSink,
        progress: ProgressFn | None = None,
        *,
        small: bool = False,
        source: SourceFn | None = None,
    ) -> Descriptor:
        """Stream a blob into the content store, verified, from the first mirror that
        serves it whole and right, else from this registry (see ``_fetch_blob_here``).
        ``source`` is told the host each attempt goes to, before its bytes come."""
        for mirror in self._mirrors_up():
            if source is not None:
                source(mirror.host)
            try:
                return mirror._fetch_blob_here(
                    repository, digest, size, blobs, progress, small=small
                )
            except _MIRROR_FALLBACK as exc:
                self._mirror_failed(mirror, digest, exc)
        if source is not None:
            source(self.host)
        return self._fetch_blob_here(repository, digest, size, blobs, progress, small=small)

    def _fetch_blob_here(
        self,
        repository: str,
        digest: str,
        size: int | None,
        blobs: BlobSink,
        progress: ProgressFn | None = None,
        *,
        small: bool = False,
    ) -> Descriptor:
        """Stream a blob from this host into the content store, verified; resume with Range
        if cut off.

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
        blobs: BlobSink,
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
        """Close pooled connections (the mirrors' too)."""
        for mirror in self.mirrors:
            mirror.close()
        self._session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
