"""The S3 driver: blobs as objects ``<prefix>/sha256/<hex>`` in a bucket every host shares.

Built on ``obstore`` (the Rust ``object_store`` crate): one import of a few milliseconds, and
its put is what the store's promises need. A put with ``mode="create"`` sends
``If-None-Match: *``, so two hosts writing one blob leave one object (the second is told it
exists, and its bytes are the same); a large put goes as a multipart upload that is completed
only when the whole stream was read, and aborted when reading it raised, so a stream whose
digest turns out wrong (checked as its last chunk is read) leaves no object and no upload
behind. Reads take a Range: a seek starts a new ranged GET from there.
"""

from __future__ import annotations

import io
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from ..digest import CHUNK, Digester, digest_hex, validate_digest
from ..errors import BlobNotFound, BlobStoreUnavailable, DigestMismatch, SizeMismatch
from .base import BlobEntry, BlobStore, Descriptor

if TYPE_CHECKING:
    from obstore import BytesStream
    from obstore.store import S3Config

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
# parts of a multipart upload; S3 wants at least 5 MiB for all but the last
PART = 8 << 20
# the most one ranged GET reads
WINDOW = 64 << 20
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

    @classmethod
    def from_environment(
        cls,
        bucket: str,
        prefix: str,
        tmp: Path,
        *,
        reserve: int = 0,
        environ: dict[str, str] | None = None,
    ) -> S3Blobs:
        """The bucket reached as the AWS tools reach it: ``AWS_ENDPOINT_URL`` (none: AWS),
        ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID`` and
        ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN``)."""
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
            client = open_client("10s", "300s")
            # for a health check: one try, a few seconds at most
            probe = open_client("2s", "5s", retry_config={"max_retries": 0})
        except (BaseError, ValueError) as exc:
            where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
            raise BlobStoreUnavailable(f"object store {where}: {exc}") from exc
        blobs = cls(client, bucket, prefix, tmp, reserve=reserve, endpoint=endpoint)
        blobs.probe_client = probe
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
        return io.BufferedReader(_ObjectReader(self, self.key(digest), size), CHUNK)

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


class _ObjectReader(io.RawIOBase):
    """An object read as a seekable file: reads stream ranged GETs of at most ``WINDOW`` bytes
    from where the last seek left off (each GET well inside the client's request timeout,
    however slow the link), and a seek elsewhere starts another."""

    def __init__(self, blobs: S3Blobs, key: str, size: int) -> None:
        self._blobs = blobs
        self._key = key
        self._size = size
        self._pos = 0
        self._stream: BytesStream | None = None
        self._window_end = 0
        self._held = memoryview(b"")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        target = base + offset
        if target < 0:
            raise OSError(f"negative seek position {target}")
        if target != self._pos:
            self._pos = target
            self._stream, self._held = None, memoryview(b"")
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        if not self._held:
            if self._stream is not None and self._pos >= self._window_end:
                self._stream = None  # this window read whole: the next one
            if self._stream is None:
                self._blobs._use()
                self._window_end = min(self._size, self._pos + WINDOW)
                try:
                    result = obstore.get(
                        self._blobs.client,
                        self._key,
                        options={"range": (self._pos, self._window_end)},
                    )
                    self._stream = iter(result.stream(min_chunk_size=CHUNK))
                except FileNotFoundError:
                    raise BlobNotFound(f"blob {self._key} went from the object store") from None
                except (BaseError, OSError) as exc:
                    raise self._blobs._failed(f"reading {self._key}", exc) from exc
            try:
                self._held = memoryview(next(self._stream))
            except StopIteration:
                raise SizeMismatch(self._size, self._pos, f"object {self._key}") from None
            except (BaseError, OSError) as exc:
                raise self._blobs._failed(f"reading {self._key}", exc) from exc
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._held))
        view[:n] = self._held[:n]
        self._held = self._held[n:]
        self._pos += n
        return n

    def close(self) -> None:
        self._stream, self._held = None, memoryview(b"")
        super().close()
