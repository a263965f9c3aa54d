"""The S3 driver: blobs as objects ``<prefix>/sha256/<hex>`` in a bucket every host shares.

Built on ``obstore`` (the Rust ``object_store`` crate): one import of a few milliseconds, and
its put is what the store's promises need. A put with ``mode="create"`` sends
``If-None-Match: *``, so two hosts writing one blob leave one object (the second is told it
exists, and its bytes are the same); a large put goes as a multipart upload that is completed
only when the whole stream was read, and aborted when reading it raised, so a stream whose
digest turns out wrong (checked as its last chunk is read) leaves no object and no upload
behind. Reads take a Range, fetched a few MiB ahead of the reader by a thread of their own
(the next chunk is on its way while the reader inflates or sends the one before); a seek
stops that and starts again from there.
"""

from __future__ import annotations

import io
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from ..digest import CHUNK, Digester, digest_hex, validate_digest
from ..errors import BlobNotFound, BlobStoreUnavailable, DigestMismatch, SizeMismatch
from .base import BlobEntry, BlobStore, Descriptor

if TYPE_CHECKING:
    from obstore.store import RetryConfig, S3Config

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
# how far an open blob's reads run ahead of its reader (in chunks of CHUNK bytes)
READ_AHEAD = 4 << 20
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
    """An object read as a seekable file, its bytes fetched ahead of the reader (``_ReadAhead``)
    from where the last seek left off: a seek elsewhere stops that and starts another."""

    def __init__(self, blobs: S3Blobs, key: str, size: int) -> None:
        self._blobs = blobs
        self._key = key
        self._size = size
        self._pos = 0
        self._ahead: _ReadAhead | None = None
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
            self._stop_ahead()
        return self._pos

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        if not self._held:
            self._blobs._use()
            if self._ahead is None:
                self._ahead = _ReadAhead(self._blobs, self._key, self._pos, self._size)
            chunk = self._ahead.next()
            if chunk is None:  # the fetch ended short of the size (it says so first)
                raise SizeMismatch(self._size, self._pos, f"object {self._key}")
            self._held = chunk
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._held))
        view[:n] = self._held[:n]
        self._held = self._held[n:]
        self._pos += n
        return n

    def _stop_ahead(self) -> None:
        ahead, self._ahead, self._held = self._ahead, None, memoryview(b"")
        if ahead is not None:
            ahead.stop()

    def close(self) -> None:
        self._stop_ahead()
        super().close()


class _ReadAhead:
    """An object's bytes from ``start`` to ``end``, fetched in a thread of its own while the
    reader works on the chunks before: ranged GETs of at most ``WINDOW`` bytes each (each
    well inside the client's request timeout, however slow the link), their chunks handed
    over through a queue of at most ``READ_AHEAD`` bytes. A failure is handed over in its
    turn, as the typed error the read that reaches it raises. ``stop`` ends the thread."""

    def __init__(self, blobs: S3Blobs, key: str, start: int, end: int) -> None:
        self._blobs = blobs
        self._key = key
        self._start = start
        self._end = end
        self.fetched = start  # where the fetching has come to
        self._handover: queue.Queue[object] = queue.Queue(max(1, READ_AHEAD // CHUNK))
        self._stopped = threading.Event()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._fetch, name="blob-read-ahead", daemon=True)
        self._thread.start()

    def next(self) -> memoryview | None:
        """The next chunk (never empty), None past the end; raises what fetching it raised
        (again at every later call)."""
        item = self._handover.get()
        if isinstance(item, BaseException) or item is _END:
            self._handover.put(item)  # the last item: there is room for it again
            if item is _END:
                return None
            raise cast(BaseException, item)
        return memoryview(cast(bytes, item)).cast("B")

    def stop(self) -> None:
        """End the fetching (a request under way ends first) and let its chunks go."""
        if os.getpid() != self._pid:
            return  # a forked child: the thread (and whoever held the queue's lock) is not here
        self._stopped.set()
        self._drain()  # a fetch waiting for room in the queue sees the stop at once
        self._thread.join()
        self._drain()

    def _drain(self) -> None:
        with suppress(queue.Empty):
            while True:
                self._handover.get_nowait()

    def _hand(self, item: object) -> bool:
        """Queue ``item`` once there is room; False if stopped meanwhile."""
        while not self._stopped.is_set():
            try:
                self._handover.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _fetch(self) -> None:
        pos, what = self._start, f"reading {self._key}"
        item: object = _END
        try:
            while pos < self._end:
                first, last = pos, min(self._end, pos + WINDOW)
                result = obstore.get(
                    self._blobs.client, self._key, options={"range": (first, last)}
                )
                for chunk in result.stream(min_chunk_size=CHUNK):
                    pos += len(chunk)
                    self.fetched = pos
                    if pos > last:
                        raise ValueError(f"the bytes {first}-{last} asked came back longer")
                    if chunk and not self._hand(chunk):
                        return
                if pos < last:
                    raise SizeMismatch(self._end, pos, f"object {self._key}")
        except FileNotFoundError:
            item = BlobNotFound(f"blob {self._key} went from the object store")
        except (BaseError, OSError, ValueError) as exc:
            failed = self._blobs._failed(what, exc)
            failed.__cause__ = exc
            item = failed
        except BaseException as exc:  # handed to the reader, which raises it
            item = exc
        self._hand(item)
