"""Reading an object of the S3 driver as a seekable file, its bytes fetched ahead of the
reader: ranged GETs in a thread of their own, a few MiB ahead, so the next chunk is on its way
while the reader inflates or sends the one before. A seek stops that and starts again from
there; a failure reaches the read that needs the bytes, as the driver's typed errors."""

from __future__ import annotations

import io
import os
import queue
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, cast

import obstore
from obstore.exceptions import BaseError

from ..digest import CHUNK
from ..errors import BlobNotFound, SizeMismatch

if TYPE_CHECKING:
    from .s3 import S3Blobs

# the most one ranged GET reads (each well inside the client's request timeout)
WINDOW = 64 << 20
# how far an open blob's reads run ahead of its reader (in chunks of CHUNK bytes)
READ_AHEAD = 4 << 20
_END = object()


class ObjectReader(io.RawIOBase):
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
