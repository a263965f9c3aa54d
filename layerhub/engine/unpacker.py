"""Unpacking layers in processes of their own, so that as many run at once as there are cores.

Python runs one thread at a time: two layers unpacked by two threads of one process share one
core for their tar parsing. A pull therefore hands each layer to an unpacker process (one per
unpack slot, reused from layer to layer), which runs ``apply_layer`` exactly as a thread
would, on the blob's file in ``tmp/`` as the download writes it:

- the parent tells the child which file to read and where to unpack it (``{"layer": ...}``),
  then how many bytes of the file are there as they arrive (``{"size": n}``) and, once the
  blob's digest has checked out, where it ends (``{"end": n}``): the child never reads a byte
  the download has not written, nor takes the end of the file for the end of the blob;
- the child answers with how far it has read (``{"read": n}``, for the progress line), then
  the result (``{"done": ...}``) or the error (``{"error": ...}``), rebuilt as the same typed
  error in the parent. The layer's file index (thousands of records) does not go down the
  pipe: the child writes it to the file the parent named (``index``, beside the staged tree
  in ``tmp/``), and the parent reads it back and removes it once the child is done.

One JSON object per line each way. A child whose layer failed, or whose download started
over or stopped, is killed and replaced; what it wrote is in ``tmp/``, discarded by the
parent. The child holds no lock and publishes nothing: the parent does both.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from .apply import ApplyLimits, ApplyResult, apply_layer
from .file_index import read_records, write_records

READ_REPORT_BYTES = 4 << 20  # how often the child says how far it has read
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# The collector is off from the first line (see child_main): its passes over the import's
# objects alone cost a few milliseconds of every pull.
_CHILD = (
    "import gc; gc.disable(); import sys; sys.path.insert(0, sys.argv[1]); "
    "from layerhub.engine.unpacker import child_main; child_main()"
)


class UnpackerDied(RuntimeError):
    """The unpacker process ended without an answer (killed, or out of memory)."""


def error_record(exc: BaseException) -> dict[str, Any]:
    """What the parent needs to raise the same error: its class, message and attributes."""
    attrs = {
        key: value
        for key, value in vars(exc).items()
        if isinstance(value, str | int | float | bool | type(None))
    }
    record: dict[str, Any] = {
        "module": type(exc).__module__,
        "name": type(exc).__qualname__,
        "message": str(exc),
        "attrs": attrs,
    }
    if isinstance(exc, OSError):
        record["os"] = [exc.errno, exc.strerror, exc.filename]
    return record


def rebuild_error(record: dict[str, Any]) -> Exception:
    """The typed error a child reported (an unknown kind becomes a RuntimeError)."""
    module, name, message = record.get("module"), record.get("name"), str(record.get("message"))
    cls: Any = None
    if module == "builtins":
        cls = getattr(builtins, str(name), None)
    elif isinstance(module, str) and module.startswith("layerhub."):
        cls = getattr(importlib.import_module(module), str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return RuntimeError(f"{name}: {message}")
    if issubclass(cls, OSError) and isinstance(record.get("os"), list):
        errno_, strerror, filename = record["os"]
        return cls(errno_, strerror, filename)
    exc: Exception = cls.__new__(cls)
    Exception.__init__(exc, message)
    for key, value in dict(record.get("attrs") or {}).items():
        setattr(exc, key, value)
    return exc


# -- the child ----------------------------------------------------------------------------------


class _Followed:
    """The blob's file, read no further than the parent says the download has reached."""

    def __init__(self, path: str, control: IO[bytes], report: Callable[[int], None]) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._control = control
        self._report = report
        self._known = 0
        self._ended = False
        self._pos = 0
        self._reported = 0

    def read(self, size: int = -1) -> bytes:
        while self._pos >= self._known:
            if self._ended:
                return b""
            line = self._control.readline()
            if not line:
                raise UnpackerDied("the pulling process went away")
            message = json.loads(line)
            if "size" in message:
                self._known = int(message["size"])
            elif "end" in message:
                self._known, self._ended = int(message["end"]), True
        want = self._known - self._pos if size < 0 else min(size, self._known - self._pos)
        data = os.pread(self._fd, want, self._pos)
        if not data:
            raise UnpackerDied("the blob's file is shorter than the download said")
        self._pos += len(data)
        if self._pos - self._reported >= READ_REPORT_BYTES:
            self._reported = self._pos
            self._report(self._pos)
        return data

    def close(self) -> None:
        os.close(self._fd)


def child_main() -> None:
    """The unpacker process: one layer after another, until its input ends."""
    # An unpack makes no reference cycles, only short-lived tuples and bytes by the hundred
    # thousand, each batch of which would set off the cyclic collector (2% of a pull's CPU).
    # What cycles there are go between layers.
    gc.disable()
    control = sys.stdin.buffer
    out = sys.stdout.buffer

    def send(message: dict[str, Any]) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    while line := control.readline():
        job = json.loads(line)["layer"]
        source = _Followed(job["path"], control, lambda n: send({"read": n}))
        index = job.get("index")
        try:
            result = apply_layer(
                cast(BinaryIO, source),
                Path(job["dest"]),
                whiteouts=_whiteouts(job["whiteouts"]),
                limits=ApplyLimits(**job["limits"]),
                privileged=job["privileged"],
                index=bool(index),
                spare=_spare(job.get("spare")),
            )
            if index and result.files is not None:
                write_records(Path(index), result.files)
        except Exception as exc:
            send({"error": error_record(exc)})
            return  # the rest of this layer's messages would follow: this child is done
        finally:
            source.close()
        done = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        done["files"] = None  # in the index file
        send({"done": done})
        gc.collect()
    # Input closed: nothing is left to say or write (every answer was flushed, the layer's
    # writer closed). Ending here spares the interpreter's teardown, which the parent
    # would wait for.
    out.flush()
    os._exit(0)


def _spare(flag: str | None) -> Callable[[], bool] | None:
    """Whether a core is free for the layer's writer process: once the parent made ``flag``."""
    if flag is None:
        return None
    return lambda: os.path.exists(flag)


def _whiteouts(name: str) -> Any:
    from .whiteouts import format_named

    return format_named(name)


# -- the parent ---------------------------------------------------------------------------------


class Unpacker:
    """One unpacker process, used by one unpack slot for layer after layer."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, _PACKAGE_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        self._send_lock = threading.Lock()
        self._index: Path | None = None
        self.alive = True

    def send(self, message: dict[str, Any]) -> None:
        """One control message (from any thread)."""
        assert self._proc.stdin is not None
        with self._send_lock:
            self._proc.stdin.write(json.dumps(message).encode() + b"\n")
            self._proc.stdin.flush()

    def start(
        self,
        path: str,
        dest: Path,
        *,
        whiteouts: str,
        limits: ApplyLimits,
        privileged: bool,
        index: Path | None = None,
        spare: Path | None = None,
    ) -> None:
        """Give the child its next layer: ``path`` (fed by ``send``), unpacked into ``dest``;
        with ``index``, the layer's file index is written there (and read by ``result``);
        with ``spare``, its writer process starts only once that file exists (a core is
        free: fswriter.py)."""
        self._index = index
        self.send(
            {
                "layer": {
                    "path": path,
                    "dest": str(dest),
                    "whiteouts": whiteouts,
                    "limits": dataclasses.asdict(limits),
                    "privileged": privileged,
                    "index": None if index is None else str(index),
                    "spare": None if spare is None else str(spare),
                }
            }
        )

    def result(self, on_read: Callable[[int], None]) -> ApplyResult:
        """The child's result for its layer, or its error raised here; UnpackerDied if it
        ended without one (``kill``, say)."""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            if "read" in message:
                on_read(int(message["read"]))
            elif "done" in message:
                result = ApplyResult(**message["done"])
                if self._index is not None and self._index.exists():
                    files = tuple(read_records(self._index))
                    self._index.unlink()
                    result = dataclasses.replace(result, files=files)
                return result
            elif "error" in message:
                self.close()
                raise rebuild_error(message["error"])
        self.close()
        raise UnpackerDied("the unpacker process ended without an answer")

    def kill(self) -> None:
        """Stop the child at once (from any thread): the one waiting in ``unpack`` then
        gets UnpackerDied. What it wrote stays in tmp/, for the caller to discard."""
        if self.alive:
            self._proc.kill()

    def close(self) -> None:
        """Let the child end (its input closed) and reap it."""
        if not self.alive:
            return
        self.alive = False
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
