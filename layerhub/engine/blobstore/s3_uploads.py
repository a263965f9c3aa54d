"""Multipart uploads over S3's REST API: what obstore's client does not offer. It cannot
complete a multipart upload create-only, nor list the uploads a client killed in the middle
of one left behind, nor abort them.

- ``POST /bucket/key?uploads`` (CreateMultipartUpload), ``PUT /bucket/key?partNumber=..
  &uploadId=...`` (UploadPart) and ``POST /bucket/key?uploadId=...`` with ``If-None-Match: *``
  (CompleteMultipartUpload, create-only: 412 when the object is there): a blob's upload;
- ``GET /bucket?uploads&prefix=...`` (ListMultipartUploads): the uploads begun and neither
  completed nor aborted, page by page;
- ``GET /bucket/key?uploadId=...`` (ListParts): the bytes an upload's parts hold;
- ``DELETE /bucket/key?uploadId=...`` (AbortMultipartUpload): its parts go.

Each request is signed with AWS Signature Version 4 from the keys the driver was given, and
sent path-style to ``AWS_ENDPOINT_URL`` (AWS: ``https://s3.<region>.amazonaws.com``), as
obstore sends its own. The answers are read whole up to a cap and parsed as plain XML: a
document type declaration (entities) is refused before parsing, and what is missing or
malformed is an error, never a guess.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ssl
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

import requests
import requests.adapters
import requests.structures
import truststore

from ..errors import BlobStoreUnavailable

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# the most an answer may hold: a page of 1000 uploads or parts is a few hundred kB
MAX_ANSWER = 8 << 20
# uploads or parts asked for per page (S3's most), and the pages of one listing: a server
# whose markers never end is stopped there
PAGE = 1000
MAX_PAGES = 1000
TIMEOUT = 30.0
# how often a completion that collided with another conditional write is tried (AWS answers
# 409 ConditionalRequestConflict and asks for a retry), and the wait before the next try
COMPLETE_TRIES = 5
CONFLICT_WAIT = 0.2
# a part the store failed to take (no answer, or 429/5xx: busy or broken for a moment) is sent
# again, after PART_WAIT seconds times the try's number: sending a part again replaces it
PART_TRIES = 3
PART_WAIT = 1.0
TRANSIENT = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Credentials:
    """Static keys (and a session token): what the request is signed with."""

    access_key: str
    secret_key: str
    token: str = ""


@dataclass(frozen=True)
class Upload:
    """A multipart upload begun and neither completed nor aborted: its object key (the
    prefix included), its id, and when it began (None when the answer did not say)."""

    key: str
    upload_id: str
    initiated: datetime.datetime | None


def _uri_encode(text: str, *, slash: bool) -> str:
    """S3's UriEncode: everything but ``A-Z a-z 0-9 - _ . ~`` (and ``/`` in a path)."""
    return quote(text, safe="/~" if slash else "~")


def sign(
    method: str,
    url: str,
    query: dict[str, str],
    credentials: Credentials,
    region: str,
    *,
    now: datetime.datetime | None = None,
    payload_sha256: str = EMPTY_SHA256,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers that sign a request to ``url`` (scheme, host and an encoded path, no
    query) with ``query`` and a body whose sha256 is ``payload_sha256``, with AWS Signature
    Version 4 for S3; ``extra`` headers (``If-None-Match``) are signed and sent too. ``Host``
    is among them: send it as given."""
    parts = urlsplit(url)
    stamp = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {
        **{name.lower(): value for name, value in (extra or {}).items()},
        "host": parts.netloc,
        "x-amz-content-sha256": payload_sha256,
        "x-amz-date": stamp,
    }
    if credentials.token:
        headers["x-amz-security-token"] = credentials.token
    names = sorted(headers)
    signed_headers = ";".join(names)
    canonical = "\n".join(
        [
            method,
            parts.path or "/",
            canonical_query(query),
            "".join(f"{name}:{headers[name].strip()}\n" for name in names),
            signed_headers,
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + credentials.secret_key).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    sent = {name: headers[name] for name in names}
    sent["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return sent


def canonical_query(query: dict[str, str]) -> str:
    """The query as signed and sent: names and values encoded, sorted by name."""
    pairs = sorted(
        (_uri_encode(name, slash=False), _uri_encode(value, slash=False))
        for name, value in query.items()
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def signed_request(
    method: str,
    endpoint: str,
    path: str,
    query: dict[str, str],
    credentials: Credentials,
    region: str,
    *,
    body: bytes = b"",
    timeout: float = TIMEOUT,
    session: requests.Session | None = None,
    extra: dict[str, str] | None = None,
) -> requests.Response:
    """A request to ``path`` (not encoded yet) under ``endpoint`` (its own path kept),
    signed (``extra`` headers too); its answer unread (``stream``)."""
    base = urlsplit(endpoint.rstrip("/"))
    url = f"{base.scheme}://{base.netloc}{_uri_encode(base.path + path, slash=True)}"
    digest = hashlib.sha256(body).hexdigest()
    headers = sign(method, url, query, credentials, region, payload_sha256=digest, extra=extra)
    full = url + (f"?{canonical_query(query)}" if query else "")
    return (session or trusting_session()).request(
        method,
        full,
        headers=headers,
        data=body or None,
        timeout=timeout,
        stream=True,
        allow_redirects=False,
    )


class _SystemTrust(requests.adapters.HTTPAdapter):
    """HTTPS verified against the operating system's trust store (``truststore``), the one
    obstore's client trusts (and the registry client), not certifi's bundle alone."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        super().init_poolmanager(*args, **kwargs)


def trusting_session() -> requests.Session:
    """A session whose HTTPS trusts what the operating system trusts."""
    session = requests.Session()
    session.mount("https://", _SystemTrust())
    return session


class PendingUploads:
    """The multipart uploads of ``bucket`` at ``endpoint``: listed, measured and aborted
    (see the module docstring). ``where`` names the store in error messages."""

    def __init__(
        self,
        endpoint: str,
        region: str,
        bucket: str,
        credentials: Credentials,
        *,
        where: str,
        timeout: float = TIMEOUT,
    ) -> None:
        self.endpoint = endpoint or f"https://s3.{region}.amazonaws.com"
        self.region = region
        self.bucket = bucket
        self.credentials = credentials
        self.where = where
        self.timeout = timeout
        self._session = trusting_session()

    def close(self) -> None:
        """Close the connections kept open."""
        self._session.close()

    def _call(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        what: str,
        *,
        body: bytes = b"",
        extra: dict[str, str] | None = None,
        expected: tuple[int, ...] = (),
    ) -> tuple[int, ET.Element | None, requests.structures.CaseInsensitiveDict[str]]:
        """Send one request; its status (2xx, 404 of a key: not there, or one of
        ``expected``), its answer's XML root (None for an empty answer, or one of an
        ``expected`` status) and its headers. Anything else is BlobStoreUnavailable saying
        what failed."""
        path = f"/{self.bucket}/{key}" if key else f"/{self.bucket}"
        try:
            with signed_request(
                method,
                self.endpoint,
                path,
                query,
                self.credentials,
                self.region,
                body=body,
                extra=extra,
                timeout=self.timeout,
                session=self._session,
            ) as response:
                answer = _read_capped(response)
                status, headers = response.status_code, response.headers
        except requests.RequestException as exc:
            raise self._failed(what, str(exc)) from exc
        if status in expected or (status == 404 and key):
            return status, None, headers
        if not 200 <= status < 300:
            raise self._failed(what, f"HTTP {status}{_error_detail(answer)}")
        if not answer.strip():
            return status, None, headers
        try:
            return status, _parse(answer), headers
        except ValueError as exc:
            raise self._failed(what, str(exc)) from None

    def _failed(self, what: str, detail: str) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(f"object store {self.where}: {what} failed: {detail}")

    def list(self, prefix: str) -> Iterator[Upload]:
        """The uploads whose key starts with ``prefix``, page after page, each once.

        The next page starts from the markers the last one named: AWS names a key and an
        upload id (``NextKeyMarker``, ``NextUploadIdMarker``); SeaweedFS, which lists by
        upload id, only the id, and takes a key marker as a filter on that one key, so only
        the markers given are sent back."""
        what = f"listing the multipart uploads under {prefix or '/'}"
        markers: dict[str, str] = {}
        seen: set[tuple[str, str]] = set()
        for _ in range(MAX_PAGES):
            query = {"uploads": "", "prefix": prefix, "max-uploads": str(PAGE), **markers}
            _, root, _ = self._call("GET", "", query, what)
            if root is None:
                raise self._failed(what, "an empty answer")
            for item in _children(root, "Upload"):
                key, upload_id = _text(item, "Key"), _text(item, "UploadId")
                if not key or not upload_id:
                    raise self._failed(what, "an upload without a key or an id")
                # a server that ignores the prefix lists others' uploads too: not ours
                if key.startswith(prefix) and (key, upload_id) not in seen:
                    seen.add((key, upload_id))
                    yield Upload(key, upload_id, _timestamp(_text(item, "Initiated")))
            if _text(root, "IsTruncated").lower() != "true":
                return
            following = {
                name: value
                for name, value in (
                    ("key-marker", _text(root, "NextKeyMarker")),
                    ("upload-id-marker", _text(root, "NextUploadIdMarker")),
                )
                if value
            }
            if not following or following == markers:
                raise self._failed(what, "a truncated page with no new marker to go on from")
            markers = following
        raise self._failed(what, f"more than {MAX_PAGES} pages")

    def size(self, upload: Upload) -> int:
        """The bytes the upload's parts hold (0 once it is gone)."""
        what = f"listing the parts of upload {upload.upload_id} of {upload.key}"
        total = 0
        marker: dict[str, str] = {}
        for _ in range(MAX_PAGES):
            query = {"uploadId": upload.upload_id, "max-parts": str(PAGE), **marker}
            status, root, _ = self._call("GET", upload.key, query, what)
            if status == 404:
                return 0
            if root is None:
                raise self._failed(what, "an empty answer")
            for part in _children(root, "Part"):
                try:
                    total += max(0, int(_text(part, "Size")))
                except ValueError:
                    raise self._failed(what, "a part without a size") from None
            if _text(root, "IsTruncated").lower() != "true":
                return total
            following = {"part-number-marker": _text(root, "NextPartNumberMarker")}
            if not following["part-number-marker"] or following == marker:
                raise self._failed(what, "a truncated page with no marker to go on from")
            marker = following
        raise self._failed(what, f"more than {MAX_PAGES} pages")

    def abort(self, upload: Upload) -> bool:
        """Abort the upload (its parts go); False if it was not there any more (completed or
        aborted meanwhile), as AWS answers (404); SeaweedFS answers 204 for an upload
        aborted before, which counts as aborted here."""
        what = f"aborting upload {upload.upload_id} of {upload.key}"
        status, _, _ = self._call("DELETE", upload.key, {"uploadId": upload.upload_id}, what)
        return status != 404

    def begin(self, key: str, what: str) -> Upload:
        """Begin a multipart upload of ``key`` (the prefix included)."""
        _, root, _ = self._call("POST", key, {"uploads": ""}, f"{what}: beginning it")
        upload_id = _text(root, "UploadId") if root is not None else ""
        if not upload_id:
            raise self._failed(f"{what}: beginning it", "an answer without an upload id")
        return Upload(key, upload_id, None)

    def put_part(self, upload: Upload, number: int, data: bytes, what: str) -> str:
        """Send part ``number`` (from 1) of the upload; its ETag, which completing names.
        The part's sha256 is signed, so the store refuses bytes changed on the way."""
        doing = f"{what}: part {number}"
        query = {"partNumber": str(number), "uploadId": upload.upload_id}
        for attempt in range(1, PART_TRIES + 1):
            last = attempt == PART_TRIES
            try:
                status, _, headers = self._call(
                    "PUT", upload.key, query, doing, body=data, expected=() if last else TRANSIENT
                )
            except BlobStoreUnavailable as exc:
                if last or not isinstance(exc.__cause__, requests.RequestException):
                    raise
                status = 0  # no answer: the connection failed
            if status and status not in TRANSIENT:
                break
            time.sleep(PART_WAIT * attempt)
        etag = headers.get("ETag", "")
        if status == 404 or not etag:
            raise self._failed(doing, "the upload is gone" if status == 404 else "no ETag")
        return etag

    def complete(self, upload: Upload, etags: Sequence[str], what: str) -> bool:
        """Complete the upload create-only (``If-None-Match: *``): the object appears, whole,
        and True; False when an object of that key is there already (412), which stays as
        it is and the upload stays pending (the caller aborts it)."""
        doing = f"{what}: completing it"
        parts = "".join(
            f"<Part><PartNumber>{number}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
            for number, etag in enumerate(etags, 1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        query = {"uploadId": upload.upload_id}
        for attempt in range(1, COMPLETE_TRIES + 1):
            status, root, _ = self._call(
                "POST",
                upload.key,
                query,
                doing,
                body=body,
                extra={"If-None-Match": "*"},
                expected=(409, 412),
            )
            # AWS may answer 200 and an error document (a failure after it began answering)
            code = _text(root, "Code") if root is not None and _local(root.tag) == "Error" else ""
            if status == 412 or code == "PreconditionFailed":
                return False
            if status == 409 or code == "ConditionalRequestConflict":
                time.sleep(CONFLICT_WAIT * attempt)  # another write of the key is under way
                continue
            if status == 404:
                raise self._failed(doing, "the upload is gone")
            if code or root is None or _local(root.tag) != "CompleteMultipartUploadResult":
                raise self._failed(doing, f"HTTP {status} ({code or 'no result'})")
            return True
        raise self._failed(doing, f"it collided with another write {COMPLETE_TRIES} times")


def _read_capped(response: requests.Response) -> bytes:
    """The answer's body, refused past MAX_ANSWER bytes."""
    body = bytearray()
    for chunk in response.iter_content(64 << 10):
        body += chunk
        if len(body) > MAX_ANSWER:
            raise requests.RequestException(f"an answer of more than {MAX_ANSWER} bytes")
    return bytes(body)


def _parse(body: bytes) -> ET.Element:
    """An answer's XML, with no document type (no entities to expand, internal or external)."""
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise ValueError("an answer declaring a document type")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise ValueError(f"an answer that is not XML ({exc})") from None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    """The element's children named ``name`` (in S3's namespace or none)."""
    return [child for child in element if _local(child.tag) == name]


def _text(element: ET.Element, name: str) -> str:
    found = _children(element, name)
    return (found[0].text or "").strip() if found else ""


def _timestamp(text: str) -> datetime.datetime | None:
    """An ISO 8601 time as S3 gives it (``2025-01-31T12:00:00.000Z``), in UTC; None if
    missing or not one."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.astimezone(datetime.UTC)


def _error_detail(body: bytes) -> str:
    """``: Code: Message`` from an S3 error answer, when it is one."""
    try:
        root = _parse(body)
    except ValueError:
        return ""
    code, message = _text(root, "Code"), _text(root, "Message")
    detail = ": ".join(part for part in (code, message) if part)
    return f" ({detail[:300]})" if detail else ""
