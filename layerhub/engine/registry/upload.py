"""Pushing blobs and manifests: upload sessions (monolithic or chunked, streamed from the content
store), cross-repository mounts, manifest uploads. Mixed into RegistryClient."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from ..digest import sha256_bytes, validate_digest
from ..errors import DigestMismatch, RegistryError, SizeMismatch
from ..store import BlobStore
from .limits import READ_ERRORS, Deadline
from .scopes import push_scope

CHUNK = 1 << 20
_RANGE = re.compile(r"(?:bytes=)?0-(\d+)")
ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class UploadSession:
    """A blob upload the registry opened: where the bytes go next."""

    repository: str
    location: str  # absolute; the registry's own query (its upload state) is kept as sent
    min_chunk: int = 0  # OCI-Chunk-Min-Length, when the registry announces one


class _Window:
    """``length`` bytes of an open blob from ``start``, as a request body: requests sends it
    with a Content-Length (from ``len``) and reads it piece by piece, so a layer is never
    held in memory; ``position`` is told how far into the blob the reading got."""

    def __init__(
        self, blob: BinaryIO, start: int, length: int, position: Callable[[int], None]
    ) -> None:
        blob.seek(start)
        self._blob = blob
        self._at = start
        self._left = length
        self._position = position

    def __len__(self) -> int:
        return self._left

    def read(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if size is None or size < 0 else min(size, self._left)
        data = self._blob.read(n)
        if not data:
            raise SizeMismatch(self._at + self._left, self._at, "blob being pushed")
        self._at += len(data)
        self._left -= len(data)
        self._position(self._at)
        return data


class BlobUploads:
    """The push half of RegistryClient, which provides the transport declared here."""

    host: str
    timeout: float
    deadline: float

    def _request(self, method: str, path: str, *, scope: str, **kwargs: Any) -> requests.Response:
        raise NotImplementedError

    def _same_host(self, url: str) -> bool:
        raise NotImplementedError

    def _auth_header(self, scope: str) -> dict[str, str]:
        raise NotImplementedError

    def _send(
        self, method: str, url: str, *, headers: dict[str, str], timeout: float, **kwargs: Any
    ) -> requests.Response:
        raise NotImplementedError

    # -- push ----------------------------------------------------------------------------------

    def blob_exists(self, repository: str, digest: str, *, for_push: bool = False) -> bool:
        """Whether the repository holds the blob (a HEAD request).

        ``for_push`` asks with the push scope, so that a push needs a single token.
        """
        validate_digest(digest)
        scope = push_scope(repository) if for_push else f"repository:{repository}:pull"
        response = self._request(
            "HEAD", f"/v2/{repository}/blobs/{digest}", scope=scope, ok=(200, 404)
        )
        response.close()
        return response.status_code == 200

    def _upload_session(self, repository: str, response: requests.Response) -> UploadSession:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.host}: the registry opened an upload without a Location")
        try:
            min_chunk = max(0, int(response.headers.get("OCI-Chunk-Min-Length", "0")))
        except ValueError:
            min_chunk = 0
        return UploadSession(repository, urljoin(response.url, location), min_chunk)

    def start_upload(self, repository: str) -> UploadSession:
        """Open a blob upload session in ``repository``."""
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=push_scope(repository),
            ok=(202,),
        )
        with response:
            return self._upload_session(repository, response)

    def mount_blob(
        self, repository: str, digest: str, from_repository: str
    ) -> UploadSession | None:
        """Mount a blob another repository of this registry holds: None once mounted (201);
        a registry that will not mount it opens an upload session instead (202)."""
        validate_digest(digest)
        response = self._request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            scope=push_scope(repository, from_repository),
            params={"mount": digest, "from": from_repository},
            ok=(201, 202),
        )
        with response:
            if response.status_code == 201:
                return None
            return self._upload_session(repository, response)

    def push_blob(
        self,
        upload: UploadSession,
        blobs: BlobStore,
        digest: str,
        *,
        chunk_size: int | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Send a blob from the content store into an upload session and commit it.

        Monolithic by default (one ``PUT ?digest=`` carrying the blob); with ``chunk_size``,
        one ``PATCH`` per chunk (``Content-Range``, following each new Location) and a final
        ``PUT ?digest=``. The blob is streamed from its file. Nothing here is retried after a
        transient failure: the caller cancels the session and starts a new one.
        ``progress`` gets the bytes sent so far, about once a MiB.
        """
        validate_digest(digest)
        size = blobs.size(digest)
        scope = push_scope(upload.repository)
        reported = 0

        def position(at: int) -> None:
            nonlocal reported
            if progress is not None and (abs(at - reported) >= CHUNK or at == size):
                reported = at
                progress(at)

        octets = {"Content-Type": "application/octet-stream"}
        location = upload.location
        with blobs.open(digest) as blob:
            if chunk_size is None:
                response = self._request(
                    "PUT",
                    _with_digest(location, digest),
                    scope=scope,
                    headers=octets,
                    # (urllib3 sends an empty file-like body chunked: an empty blob goes as b"")
                    body=lambda: _Window(blob, 0, size, position) if size else b"",
                    ok=(201,),
                )
            else:
                step = max(chunk_size, upload.min_chunk, 1)
                for start in range(0, size, step):
                    length = min(step, size - start)
                    end = start + length - 1
                    chunk = self._request(
                        "PATCH",
                        location,
                        scope=scope,
                        headers={**octets, "Content-Range": f"{start}-{end}"},
                        body=partial(_Window, blob, start, length, position),
                        ok=(202,),
                    )
                    with chunk:
                        location = self._upload_session(upload.repository, chunk).location
                        held = _RANGE.fullmatch(chunk.headers.get("Range", "").strip())
                    if held is not None and int(held.group(1)) != end:
                        raise RegistryError(
                            f"{self.host}: after {end + 1} bytes of {digest} the upload holds "
                            f"{int(held.group(1)) + 1}"
                        )
                response = self._request(
                    "PUT",
                    _with_digest(location, digest),
                    scope=scope,
                    body=lambda: b"",
                    ok=(201,),
                )
        with response:
            announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(digest, announced, f"blob pushed to {upload.repository}")

    def cancel_upload(self, upload: UploadSession) -> None:
        """Drop an upload session (best effort: registries expire abandoned ones anyway).

        One request, no redirect followed, its answer not read, done within the deadline; the
        login goes with it only if the session lives on this registry's own origin.
        """
        headers = {}
        if self._same_host(upload.location):
            headers = self._auth_header(push_scope(upload.repository))
        with suppress(*READ_ERRORS), Deadline(self.deadline):
            self._send("DELETE", upload.location, headers=headers, timeout=self.timeout).close()

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under a tag or its digest; return its digest, checked against
        the registry's Docker-Content-Digest."""
        digest = sha256_bytes(data)
        if reference.startswith("sha256:") and reference != digest:
            raise DigestMismatch(reference, digest, f"manifest for {repository}@{reference}")
        response = self._request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            scope=push_scope(repository),
            headers={"Content-Type": media_type},
            data=data,
            ok=(201,),
        )
        with response:
            announced = response.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise DigestMismatch(digest, announced, f"manifest pushed to {repository}:{reference}")
        return digest


def _with_digest(location: str, digest: str) -> str:
    """An upload location with ``digest=`` added to whatever query it already carries."""
    query = urlsplit(location).query
    joiner = "&" if query else ("" if location.endswith("?") else "?")
    return f"{location}{joiner}{urlencode({'digest': digest})}"
