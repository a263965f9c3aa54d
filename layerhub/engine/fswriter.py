"""The file system calls that create an unpack's new files, made in a process of their own.

Creating a file costs the kernel more than it costs Python to parse the file's tar header and
hash its bytes: on ext4 most of it is spent finding a free inode. Made one after the other in
one process, the two leave a core idle while the other works; made from a second thread of
the same process, each call waits for the GIL to come back after it. So the unpacker queues,
in tar order, the calls that create what cannot exist yet (a file, directory or symlink at a
path no earlier entry wrote, and the xattrs of what it creates), and a child process makes
them while the unpacker reads on. Anything that must see the disk as the earlier entries left
it (an lstat, a removal, a hardlink, the free space) first waits until every queued call is
made: ``sync``.

A small layer never pays for the child: calls are made at once, in the unpacker's process,
until ``PROCESS_AFTER_ENTRIES`` entries have been created; the child starts then. Calls travel
to it through a pipe in marshalled batches of about 64 calls or 1 MiB of contents, so memory
stays flat whatever the layer. A wait for the queue costs a round trip to the child while it
catches up, so a stretch of the layer that makes the unpacker wait often (hardlinks,
whiteouts, replaced paths: more than one wait per ``SYNC_SHARE`` entries in a window of
``WINDOW`` entries) goes back to making its calls in the unpacker's process; a later quiet
stretch starts the child again, at most ``MAX_STARTS`` times per layer.

The child earns its copies (every byte goes through a pipe) only on a core that would
otherwise idle. A pull unpacking as many layers at once as there are cores has none to spare:
its unpacks are given ``spare``, asked at every ``WINDOW`` entries whether a core is free (the
pipeline says so once no layer waits for an unpack slot), and the child starts only then.
Without ``spare`` (one layer on its own) a core is taken to be free.

The first call that fails stops the child's work; the unpacker gets its error, with the tar
entry it belongs to, at its next hand-over or ``sync``. Closing the writer after a failure
kills the child before it makes any other call, and waits for it: when ``close`` returns,
nothing more is written.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Any

from .errors import DISK_FULL

# what a queued call is: the first item of its tuple
OPEN = 0  # (OPEN, path, mode, entry name): a new regular file, which later WRITEs fill
WRITE = 1  # (WRITE, bytes)
CLOSE = 2  # (CLOSE, uid, gid, mode, mtime_ns): owner if uid >= 0, mode if >= 0; then close
MKDIR = 3  # (MKDIR, path, mode, entry name)
SYMLINK = 4  # (SYMLINK, target, path, uid, gid, mtime_ns, entry name): owner if uid >= 0
# (SETXATTR, path, name, value, strict, entry name): an xattr the file system refuses is
# skipped, as Docker skips what the host cannot store (trusted.* and security.* need
# privilege; user.* is refused on symlinks and on some file systems), unless the disk is full
# or, ``strict`` (a privileged unpack), it is a security.* one
SETXATTR = 5
_STARTS = (OPEN, MKDIR, SYMLINK)  # the calls that begin an entry

FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PROCESS_AFTER_ENTRIES = 512  # below that, starting a process costs more than it saves
WINDOW = 256
SYNC_SHARE = 8
MAX_STARTS = 4
BATCH_CALLS = 64
BATCH_BYTES = 1 << 20
PIPE_BYTES = 1 << 20
_LENGTH = struct.Struct("<I")  # frame: length, then a marshalled (calls, reply wanted) pair
# a reply: None when every call was made, else the first failure: errno, message, file name,
# tar entry
_Failure = tuple[int, str, str | None, str]
_ENDED: _Failure = (errno.EPIPE, "the unpack's writer process ended", None, "")


class WriteFailed(Exception):
    """A queued call failed: ``error`` is what it raised, ``name`` the tar entry it was for."""

    def __init__(self, error: BaseException, name: str) -> None:
        super().__init__(f"{name}: {error}")
        self.error = error
        self.name = name


class _Maker:
    """Makes calls, in order; holds the file being written between OPEN and CLOSE."""

    def __init__(self) -> None:
        self.fd = -1
        self.name = ""  # the tar entry of the last call that named one

    def make(self, call: tuple[Any, ...]) -> None:
        code = call[0]
        if code == WRITE:
            data = call[1]
            written = os.write(self.fd, data)
            if written < len(data):
                view = memoryview(data)[written:]
                while view:
                    view = view[os.write(self.fd, view) :]
        elif code == OPEN:
            self.name = call[3]
            self.fd = os.open(call[1], FILE_FLAGS, call[2])
        elif code == CLOSE:
            _, uid, gid, mode, mtime_ns = call
            fd, self.fd = self.fd, -1
            try:
                if uid >= 0:
                    os.fchown(fd, uid, gid)
                if mode >= 0:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        elif code == MKDIR:
            self.name = call[3]
            os.mkdir(call[1], call[2])
        elif code == SETXATTR:
            _, path, key, value, strict, self.name = call
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as exc:
                if exc.errno in DISK_FULL or (strict and key.startswith("security.")):
                    raise
        else:  # SYMLINK
            _, target, path, uid, gid, mtime_ns, self.name = call
            os.symlink(target, path)
            if uid >= 0:
                os.lchown(path, uid, gid)
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class FileWriter:
    """Queued create calls, made in order. ``close`` always, even after errors."""

    def __init__(self, spare: Callable[[], bool] | None = None) -> None:
        """``spare``: whether a core is free for the child now (None: always)."""
        self._spare = spare
        self._inline: _Maker | None = _Maker()
        self._entries = 0  # entries begun (OPEN, MKDIR, SYMLINK calls)
        self._waits = 0  # syncs that had calls to wait for, in the current window
        self._busy = False  # the last whole window waited too often for the child
        self._starts = 0
        self._dirty = False  # calls were put since the last sync
        self._child: subprocess.Popen[bytes] | None = None
        self._calls: IO[bytes] | None = None
        self._replies = -1
        self._batch: list[tuple[Any, ...]] = []
        self._batch_bytes = 0

    def put(self, call: tuple[Any, ...], size: int = 0) -> None:
        """Queue ``call``; ``size``: the bytes of file contents it carries. Made at once (an
        OSError raised here is the call's) while there is no child process."""
        self._dirty = True
        if call[0] in _STARTS:
            self._begin_entry()
        inline = self._inline
        if inline is not None:
            inline.make(call)
            return
        self._batch.append(call)
        self._batch_bytes += size
        if len(self._batch) >= BATCH_CALLS or self._batch_bytes >= BATCH_BYTES:
            self._send(reply=False)

    def sync(self) -> None:
        """Wait until every queued call is made; raise WriteFailed if one failed."""
        if not self._dirty:
            return
        self._dirty = False
        self._waits += 1
        if self._inline is None:
            self._send(reply=True)
            self._check(self._read_reply())

    def _begin_entry(self) -> None:
        """An entry begins (no file is open): where the calls go may change here."""
        self._entries += 1
        if self._entries % WINDOW == 0:
            self._busy = self._waits * SYNC_SHARE > WINDOW
            self._waits = 0
            if self._busy and self._inline is None:
                self._stop()
        if (
            self._inline is not None
            and not self._busy
            and self._entries > PROCESS_AFTER_ENTRIES
            and self._starts < MAX_STARTS
            and (self._spare is None or (self._entries % WINDOW == 0 and self._spare()))
        ):
            self._starts += 1
            self._start()

    def _stop(self) -> None:
        """Back to making the calls in this process, once the child made all it was given."""
        self.sync()
        self.close()
        self._child, self._calls, self._replies = None, None, -1
        self._inline = _Maker()

    def close(self) -> None:
        """Stop: after a failure or before a ``sync``, calls not yet made are dropped (the
        child is killed first); when this returns, nothing more is written."""
        if self._inline is not None:
            self._inline.close()
            return
        child = self._child
        assert child is not None
        assert self._calls is not None
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGKILL)
        with contextlib.suppress(OSError):
            self._calls.close()
        child.wait()
        os.close(self._replies)

    # -- the unpacker's side of the child ------------------------------------------------------

    def _start(self) -> bool:
        """Start the child; False (the calls stay in this process) if it cannot start."""
        if not sys.executable:
            self._starts = MAX_STARTS
            return False
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = f"import sys; sys.path.insert(0, {root!r}); from {__name__} import serve; serve()"
        replies_r, replies_w = os.pipe()
        try:
            child = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", code, str(replies_w)],
                stdin=subprocess.PIPE,
                pass_fds=(replies_w,),
                close_fds=True,
            )
        except OSError:
            os.close(replies_r)
            self._starts = MAX_STARTS
            return False
        finally:
            os.close(replies_w)
        assert child.stdin is not None
        with contextlib.suppress(OSError):  # a larger pipe: fewer wake-ups; the default works
            fcntl.fcntl(child.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._child, self._calls, self._replies = child, child.stdin, replies_r
        self._inline = None
        return True

    def _send(self, *, reply: bool) -> None:
        batch = self._batch
        self._batch, self._batch_bytes = [], 0
        frame = marshal.dumps((batch, reply))
        assert self._calls is not None
        if not reply and select.select([self._replies], [], [], 0)[0]:
            self._check(self._read_reply())  # the child failed: say so now
        try:
            self._calls.write(_LENGTH.pack(len(frame)))
            self._calls.write(frame)
            self._calls.flush()
        except BrokenPipeError:
            self._check(self._read_reply())
            raise

    def _read_reply(self) -> _Failure | None:
        head = _read_exact(self._replies, _LENGTH.size)
        body = None if head is None else _read_exact(self._replies, _LENGTH.unpack(head)[0])
        if body is None:
            return _ENDED
        reply: _Failure | None = marshal.loads(body)
        return reply

    @staticmethod
    def _check(reply: _Failure | None) -> None:
        if reply is None:
            return
        number, message, filename, name = reply
        error = OSError(number, message) if filename is None else OSError(number, message, filename)
        raise WriteFailed(error, name)


def _read_exact(fd: int, size: int) -> bytes | None:
    parts = []
    while size:
        data = os.read(fd, size)
        if not data:
            return None
        parts.append(data)
        size -= len(data)
    return b"".join(parts)


def serve() -> None:
    """The child: make the calls read from stdin; answer on the descriptor in argv[1]."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a worker's Ctrl-C is its parent's to handle
    gc.disable()  # tuples and bytes by the hundred thousand, and no reference cycles
    replies = int(sys.argv[1])
    calls = sys.stdin.fileno()
    maker = _Maker()
    failure: _Failure | None = None
    while True:
        head = _read_exact(calls, _LENGTH.size)
        if head is None:
            return
        body = _read_exact(calls, _LENGTH.unpack(head)[0])
        if body is None:
            return
        batch, reply = marshal.loads(body)
        if failure is None:
            try:
                for call in batch:
                    maker.make(call)
            except OSError as exc:
                failure = (
                    exc.errno or errno.EIO,
                    exc.strerror or str(exc),
                    exc.filename,
                    maker.name,
                )
            except Exception as exc:  # a bug, not the disk: still the unpack's failure
                failure = (errno.EIO, f"{type(exc).__name__}: {exc}", None, maker.name)
            if failure is not None:
                maker.close()
                _reply(replies, failure)  # at once: the unpacker stops at its next hand-over
                reply = False
        if reply:
            _reply(replies, failure)


def _reply(fd: int, value: _Failure | None) -> None:
    frame = marshal.dumps(value)
    os.write(fd, _LENGTH.pack(len(frame)) + frame)
