"""The S3 driver: blobs as objects ``<prefix>/sha256/<hex>`` in a bucket every host shares.

Every upload is checked against the blob's digest and size before the object appears, and
is create-only (``If-None-Match: *``): two hosts writing one blob leave one object (the
second is told it exists, and its bytes are the same), and a wrong digest, a stream that
fails halfway or a store that fails leaves none.

- A blob of one part (``PART``, 8 MiB) or less is read, checked, then sent as one PUT with
  ``obstore`` (the Rust ``object_store`` crate).
- A longer one is a multipart upload (``s3_uploads``: requests obstore cannot make, since it
  does not complete an upload create-only), its parts sent as the bytes arrive, each signed
  with its sha256: a process holds about two parts, never the blob. Only once the last byte
  was read and the digest and size checked out is the upload completed, with
  ``If-None-Match: *`` (412: another host's object is there; ours is aborted; SeaweedFS 4.48
  honours it, though two completions racing at one moment may both go through, one after
  the other, leaving one object of the same bytes). Any failure
  (a wrong digest, the stream's error, the store's, the job cancelled) aborts the upload. A
  process killed halfway leaves its upload pending, never an object, until garbage
  collection aborts it. Without static keys (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``:
  keys from a role or a profile) those requests cannot be signed, and a longer blob is read
  whole, into memory, and sent as one PUT as well.

Reads take a Range, fetched a few MiB ahead of the reader (``s3_reads``). Multipart uploads
into the prefix that were never completed (a process killed halfway, another S3 client's copy
of blobs) are listed and aborted by garbage collection (``s3_uploads``).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from ..digest import CHUNK, CheckedDigester, digest_hex, validate_digest
from ..errors import BlobNotFound, BlobStoreUnavailable
from .base import BlobEntry, BlobStore, Descriptor, PendingUpload
from .s3_reads import ObjectReader

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Config

    from .s3_uploads import PendingUploads, Upload

_HEX = re.compile(r"[a-f0-9]{64}")


class _Runtime:
    """Whether this process used obstore's runtime, and whether it inherited a used one.

    obstore runs requests on a runtime of threads made at its first use; a process forked
    after that (a worker pool started from a process that had read a blob) would wait on
    threads it does not have, forever. Such a child is refused with a clear error instead.
    The Celery worker's parent and the web server's master only open the store, and their
    children make the first request themselves.
    """

    used = False
    inherited = False

    @classmethod
    def forked(cls) -> None:
        cls.inherited = cls.used


os.register_at_fork(after_in_child=_Runtime.forked)
# a blob longer than one part goes as a multipart upload of parts this long (longer for a
# blob of more than MAX_PARTS of them: S3 takes at most 10000 parts)
PART = 8 << 20
MAX_PARTS = 10_000
DEFAULT_REGION = "us-east-1"


class S3Blobs(BlobStore):
    """Blobs in an S3 bucket under a prefix (``bucket``, ``prefix``), through ``client``."""

    def __init__(
        self,
        client: S3Store,
        bucket: str,
        prefix: str,
        tmp: Path,
        *,
        reserve: int = 0,
        free: Callable[[], int] | None = None,
        endpoint: str = "",
    ) -> None:
        super().__init__(tmp, reserve=reserve, free=free)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint  # AWS_ENDPOINT_URL as given; empty: AWS itself
        self.probe_client: S3Store | None = None
        self.region = DEFAULT_REGION
        # what signs the requests about multipart uploads left pending (access key, secret
        # key, session token); None: no static keys (obstore's own from a role or profile)
        self.signing_keys: tuple[str, str, str] | None = None
        self._uploads: PendingUploads | None = None

    @classmethod
    def from_environment(
        cls,
        bucket: str,
        prefix: str,
        tmp: Path,
        *,
        reserve: int = 0,
        environ: dict[str, str] | None = None,
        timeout: str = "300s",
        connect_timeout: str = "10s",
        retry: RetryConfig | None = None,
    ) -> S3Blobs:
        """The bucket reached as the AWS tools reach it: ``AWS_ENDPOINT_URL`` (none: AWS),
        ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID`` and
        ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``).

        ``timeout`` bounds one request, its body included (a ranged GET reads at most
        ``WINDOW`` bytes), ``connect_timeout`` one connection, and ``retry`` how a request
        that failed on the way (a dropped connection, a 5xx) is tried again (obstore's
        default: up to 10 times within 3 minutes)."""
        env = os.environ if environ is None else environ
        config: dict[str, str] = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        }
        endpoint = env.get("AWS_ENDPOINT_URL", "")
        if endpoint:
            config["endpoint"] = endpoint
        for name, key in (
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
            ("AWS_SESSION_TOKEN", "token"),
        ):
            if env.get(name):
                config[key] = env[name]

        def open_client(connect_timeout: str, timeout: str, **options: Any) -> S3Store:
            return S3Store(
                bucket,
                prefix=prefix or None,
                config=cast("S3Config", config),
                client_options={
                    "allow_http": endpoint.startswith("http://"),
                    "connect_timeout": connect_timeout,
                    "timeout": timeout,
                },
                **options,
            )

        try:
            client = open_client(
                connect_timeout, timeout, **({"retry_config": retry} if retry else {})
            )
            # for a health check: one try, a few seconds at most
            probe = open_client("2s", "5s", retry_config={"max_retries": 0})
        except (BaseError, ValueError) as exc:
            where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
            raise BlobStoreUnavailable(f"object store {where}: {exc}") from exc
        blobs = cls(client, bucket, prefix, tmp, reserve=reserve, endpoint=endpoint)
        blobs.probe_client = probe
        blobs.region = config["region"]
        if config.get("access_key_id") and config.get("secret_access_key"):
            blobs.signing_keys = (
                config["access_key_id"],
                config["secret_access_key"],
                config.get("token", ""),
            )
        return blobs

    # -- names -------------------------------------------------------------------------------

    def key(self, digest: str) -> str:
        """The blob's object name under the prefix."""
        return f"sha256/{digest_hex(digest)}"

    def local_path(self, digest: str) -> Path | None:
        return None

    def where(self, name: str = "") -> str:
        base = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        return f"{base}sha256/{name}" if name else base.rstrip("/")

    def _use(self) -> None:
        """Before every request: refuse in a process forked after the runtime started."""
        if _Runtime.inherited:
            raise BlobStoreUnavailable(
                f"object store {self.where()}: this process was forked from one that had "
                "already used the object store, whose client cannot be used after a fork; "
                "start the process afresh"
            )
        _Runtime.used = True

    def _failed(self, what: str, exc: BaseException | str) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(f"object store {self.where()}: {what} failed: {exc}")

    # -- reads -------------------------------------------------------------------------------

    def _head(self, digest: str) -> int | None:
        self._use()
        try:
            return int(obstore.head(self.client, self.key(digest))["size"])
        except FileNotFoundError:
            return None
        except (BaseError, OSError) as exc:
            raise self._failed(f"looking up {digest}", exc) from exc

    def has(self, digest: str) -> bool:
        return self._head(digest) is not None

    def ping(self) -> None:
        """Raise BlobStoreUnavailable (its first line: what failed) unless the store answers
        one request at once, without the retries the blob requests make."""
        self._use()
        try:
            obstore.head(self.probe_client or self.client, "sha256/" + "0" * 64)
        except FileNotFoundError:
            return
        except (BaseError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BlobStoreUnavailable(f"object store {self.where()}: {first}") from exc

    def size(self, digest: str) -> int:
        size = self._head(digest)
        if size is None:
            raise BlobNotFound(f"blob {digest} is not in the store ({self.where()})")
        return size

    def open(self, digest: str) -> BinaryIO:
        size = self.size(digest)
        return io.BufferedReader(ObjectReader(self, self.key(digest), size), CHUNK)

    def list(self) -> Iterator[BlobEntry]:
        self._use()
        try:
            for batch in obstore.list(self.client, "sha256/", chunk_size=1000):
                for meta in batch:
                    name = meta["path"].removeprefix("sha256/")
                    digest = f"sha256:{name}" if _HEX.fullmatch(name) else None
                    yield BlobEntry(name, digest, int(meta["size"]))
        except (BaseError, OSError) as exc:
            raise self._failed("listing blobs", exc) from exc

    # -- multipart uploads left pending ------------------------------------------------------

    def _object_key(self, name: str) -> str:
        """The object key of ``sha256/<name>``, the prefix included (obstore adds it itself)."""
        return f"{self.prefix}/sha256/{name}" if self.prefix else f"sha256/{name}"

    def _new_uploads(self) -> PendingUploads:
        """A client of the multipart upload requests, with connections of its own."""
        # imported here: requests is for uploads of many parts and garbage collection, not
        # every process that reads
        from .s3_uploads import Credentials, PendingUploads

        if self.signing_keys is None:
            raise BlobStoreUnavailable(
                f"object store {self.where()}: multipart uploads left pending are listed with "
                "requests signed with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, which are "
                "not set; give the bucket a lifecycle rule that aborts them instead"
            )
        keys = Credentials(*self.signing_keys)
        return PendingUploads(self.endpoint, self.region, self.bucket, keys, where=self.where())

    def _pending(self) -> PendingUploads:
        if self._uploads is None:
            self._uploads = self._new_uploads()
        return self._uploads

    def pending_uploads(self) -> Sequence[PendingUpload]:
        """The multipart uploads under ``<prefix>/sha256/`` begun and neither completed nor
        aborted (a client killed in the middle of a multipart upload leaves one); other names
        there are not blobs and are left out."""
        found = []
        for upload in self._pending().list(self._object_key("")):
            name = upload.key.removeprefix(self._object_key(""))
            if _HEX.fullmatch(name):
                found.append(
                    PendingUpload(name, f"sha256:{name}", upload.upload_id, upload.initiated)
                )
        return found

    def _upload(self, upload: PendingUpload) -> Upload:
        from .s3_uploads import Upload

        return Upload(self._object_key(upload.name), upload.upload_id, upload.initiated)

    def pending_upload_size(self, upload: PendingUpload) -> int:
        return self._pending().size(self._upload(upload))

    def abort_upload(self, upload: PendingUpload) -> bool:
        return self._pending().abort(self._upload(upload))

    # -- writes ------------------------------------------------------------------------------

    def publish(self, path: Path, fd: int, blob: Descriptor, *, durable: bool) -> None:
        with open(path, "rb") as f:
            self._put(blob.digest, _chunks(f), blob.size)

    def ingest(
        self,
        stream: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> Descriptor:
        """Stream straight into the bucket, hashing on the way: the blob appears only if the
        bytes match ``expected_digest`` (and ``expected_size``), else nothing is left. A
        stream of unknown digest goes through ``tmp/`` first."""
        if expected_digest is None:
            return super().ingest(stream, None, expected_size)
        validate_digest(expected_digest)
        return self._put(expected_digest, _chunks(stream), expected_size)

    def _put(self, digest: str, chunks: Iterator[bytes], size: int | None) -> Descriptor:
        """Upload create-only, the bytes checked against ``digest`` (and ``size``) before the
        object appears; an object already there is kept (same digest, same bytes). A blob of
        one part goes as one PUT; a longer one as a multipart upload, sent part by part as
        it is read (see the module docstring)."""
        self._use()
        check = CheckedDigester(digest, size, f"blob {digest}")
        part_size = max(PART, -(-(size or 0) // MAX_PARTS))
        parts = _parts(chunks, part_size, check)
        try:
            streamed: Iterator[bytes] = parts
            if size is None or size <= part_size:
                # a second part read ahead says whether there is more than one
                first, second = next(parts, b""), next(parts, None)
                if second is None:
                    self._put_object(digest, first)
                    return Descriptor(digest, check.size)
                streamed = _chained(first, second, parts)
                del first, second  # held by ``streamed`` until sent, not beyond
            if self.signing_keys is not None:
                self._put_parts(digest, streamed)
            else:  # no static keys to sign the upload's requests with: read whole, one PUT
                self._put_object(digest, b"".join(streamed))
        finally:
            parts.close()
        return Descriptor(digest, check.size)

    def _put_object(self, digest: str, data: bytes) -> None:
        """One create-only PUT (``If-None-Match: *``) of bytes already checked."""
        try:
            obstore.put(self.client, self.key(digest), data, mode="create")
        except (AlreadyExistsError, PreconditionError):
            return
        except (BaseError, OSError) as exc:
            raise self._failed(f"upload of {digest}", exc) from exc

    def _put_parts(self, digest: str, parts: Iterator[bytes]) -> None:
        """A multipart upload of ``parts``, each sent as it comes, completed create-only
        once they all came (the last check passed); aborted on any failure, and when
        another host's object is there first."""
        uploads = self._new_uploads()
        what = f"upload of {digest}"
        try:
            upload = uploads.begin(self._object_key(digest_hex(digest)), what)
            try:
                etags: list[str] = []
                # no enumerate(): its tuple, kept for reuse, would hold the part sent
                # while the next one is read
                for part in parts:
                    if len(etags) == MAX_PARTS:
                        raise self._failed(what, f"more than {MAX_PARTS} parts")
                    etags.append(uploads.put_part(upload, len(etags) + 1, part, what))
                    del part  # not held while the next part is read
                created = uploads.complete(upload, etags, what)
            except BaseException as exc:
                try:
                    uploads.abort(upload)
                except BlobStoreUnavailable as failed:
                    exc.add_note(f"{failed} (garbage collection aborts it later)")
                raise
            if not created:  # another host's object (the same bytes): ours goes
                uploads.abort(upload)
        finally:
            uploads.close()

    def delete(self, digest: str) -> bool:
        if not self.has(digest):
            return False
        self._use()
        try:
            obstore.delete(self.client, self.key(digest))
        except FileNotFoundError:
            return False
        except (BaseError, OSError) as exc:
            raise self._failed(f"deleting {digest}", exc) from exc
        return True


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: stream.read(CHUNK), b"")


def _parts(chunks: Iterator[bytes], size: int, check: CheckedDigester) -> Generator[bytes]:
    """``chunks`` in parts of ``size`` bytes (the last one shorter, none if there are no
    bytes), checked on the way: the check's end runs before the last part is given, so a
    wrong digest or size is raised before an upload can complete."""
    held = bytearray()
    for chunk in chunks:
        check.update(chunk)
        held += chunk
        while len(held) >= size:
            with memoryview(held) as view:
                part = bytes(view[:size])
            del held[:size]
            yield part
            del part
    check.check()
    if held:
        yield bytes(held)


def _chained(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    """``first``, ``second``, then ``rest``, each let go once given."""
    held = [first, second]
    del first, second
    while held:
        yield held.pop(0)
    yield from rest
