"""A file of another host, read a chunk per host call (layerhub.hosts.calls).

A call's answer is JSON, so a chunk travels as base64 and is kept small (READ_CHUNK): a
download of any size is a run of bounded calls, each answered from the file the host opens
through its own (path-checked, symlink-safe) view, never a path the caller names on disk.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO, cast

from layerhub.hosts.calls import decode_bytes, encode_bytes

# how much of a file one call carries
READ_CHUNK = 1 << 20


def chunk_encode(f: BinaryIO, offset: int, length: int) -> str:
    """The host's side: at most READ_CHUNK bytes of ``f`` from ``offset``, as base64."""
    f.seek(max(0, int(offset)))
    return encode_bytes(f.read(max(0, min(int(length), READ_CHUNK))))


# the caller's side: the bytes of a chunk ``chunk_encode`` answered
chunk_decode = decode_bytes


class RemoteFile(io.RawIOBase):
    """A regular file of ``size`` bytes on another host: ``read_chunk(offset, length)`` asks
    the host for a chunk. Reading stops at ``size`` (what the file's entry said: no more is
    asked for) or at the first empty chunk."""

    def __init__(self, read_chunk: Callable[[int, int], bytes], size: int) -> None:
        self._read_chunk = read_chunk
        self._offset = 0
        self._size = max(0, size)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), READ_CHUNK, self._size - self._offset)
        if want <= 0:
            return 0
        data = self._read_chunk(self._offset, want)[:want]
        got = len(data)
        buffer[:got] = data
        self._offset += got
        if got == 0:
            self._size = self._offset  # the file ended early: nothing more to ask
        return got


def remote_reader(read_chunk: Callable[[int, int], bytes], size: int) -> BinaryIO:
    """A buffered reader over ``RemoteFile``: one call per READ_CHUNK, whatever the caller's
    read sizes (a FileResponse reads a few KiB at a time)."""
    raw = RemoteFile(read_chunk, size)
    return cast(BinaryIO, io.BufferedReader(raw, buffer_size=READ_CHUNK))
