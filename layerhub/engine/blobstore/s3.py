"""The S3 driver: blobs as objects ``<prefix>/sha256/<hex>`` in a bucket every host shares.

Built on ``obstore`` (the Rust ``object_store`` crate): one import of a few milliseconds, and
its put is what the store's promises need. A put with ``mode="create"`` sends
``If-None-Match: *``, so two hosts writing one blob leave one object (the second is told it
exists, and its bytes are the same). obstore sends a create-only put as one PUT, the stream
read whole (into memory) before anything is sent, so a stream whose digest turns out wrong
(checked as its last chunk is read) or that fails halfway, or a process killed halfway,
leaves no object and no upload behind. Reads take a Range, fetched a few MiB ahead of the
reader (``s3_reads``). Multipart uploads into the prefix that were never completed (another
S3 client's copy of blobs, killed halfway) are listed and aborted by garbage collection
(``s3_uploads``: requests obstore does not make).
"""

from __future__ import annotations

import io
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from ..digest import CHUNK, Digester, digest_hex, validate_digest
from ..errors import BlobNotFound, BlobStoreUnavailable, DigestMismatch, SizeMismatch
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
# obstore's chunk size for a put (a create-only put is one PUT all the same)
PART = 8 << 20
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

    def _failed(self, what: str, exc: BaseException) -> BlobStoreUnavailable:
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

    def _pending(self) -> PendingUploads:
        # imported here: requests is for garbage collection, not every process that reads
        from .s3_uploads import Credentials, PendingUploads

        if self.signing_keys is None:
            raise BlobStoreUnavailable(
                f"object store {self.where()}: multipart uploads left pending are listed with "
                "requests signed with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, which are "
                "not set; give the bucket a lifecycle rule that aborts them instead"
            )
        if self._uploads is None:
            keys = Credentials(*self.signing_keys)
            where = self.where()
            self._uploads = PendingUploads(
                self.endpoint, self.region, self.bucket, keys, where=where
            )
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
            self._put(blob.digest, f)

    def _put(self, digest: str, chunks: Iterator[bytes] | BinaryIO) -> None:
        """Upload create-only; an object already there is kept (same digest, same bytes)."""
        self._use()
        source = chunks if isinstance(chunks, io.IOBase) else _Source(chunks)
        try:
            obstore.put(self.client, self.key(digest), source, mode="create", chunk_size=PART)
        except (AlreadyExistsError, PreconditionError):
            return
        except (BaseError, OSError) as exc:
            if isinstance(source, _Source) and source.error is not None:
                raise source.error from None  # the stream's own failure, not the store's
            raise self._failed(f"upload of {digest}", exc) from exc
        finally:
            if isinstance(source, _Source):
                source.close()

    def ingest(
        self,
        stream: BinaryIO,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> Descriptor:
        """Stream straight into the bucket, hashing on the way: the upload completes only if
        the bytes match ``expected_digest`` (and ``expected_size``), else it is aborted and
        leaves nothing. A stream of unknown digest goes through ``tmp/`` first."""
        if expected_digest is None:
            return super().ingest(stream, None, expected_size)
        validate_digest(expected_digest)
        what = f"blob {expected_digest}"
        digester = Digester()

        def verified() -> Iterator[bytes]:
            for chunk in _chunks(stream):
                digester.update(chunk)
                if expected_size is not None and digester.size > expected_size:
                    raise SizeMismatch(expected_size, digester.size, what)
                yield chunk
            # raised before the put can complete: the upload is aborted
            if expected_size is not None and digester.size != expected_size:
                raise SizeMismatch(expected_size, digester.size, what)
            if digester.digest != expected_digest:
                raise DigestMismatch(expected_digest, digester.digest, what)

        self._put(expected_digest, _handed_over(verified()))
        return Descriptor(expected_digest, digester.size)

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


_END = object()


def _handed_over(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """``chunks`` read in a thread of their own and handed over through a short queue.

    obstore pulls a put's chunks from inside its async runtime, where a read that itself goes
    to an object store (a blob copied from one store to another) cannot run; read here, the
    source may be anything. An error reading it is raised to the put, which aborts."""
    handover: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        handover.put(chunk, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: object = _END
        except BaseException as exc:  # handed to the put, which raises it
            item = exc
        while not stop.is_set():
            try:
                handover.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    reader = threading.Thread(target=produce, name="blob-put-source", daemon=True)
    reader.start()
    try:
        while True:
            item = handover.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(bytes, item)
    finally:
        stop.set()
        reader.join()


class _Source:
    """The chunks of a put, remembering the error reading them raised (which aborted it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> _Source:
        return self

    def close(self) -> None:
        """Close the chunks' generator (ending the thread that reads them, if any)."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise
