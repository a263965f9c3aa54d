"""The store's file locks end with their block, also when a process was forked while one
was held (a worker's pool child forked while its main process evicts a snapshot)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from layerhub.engine import fsutil


def _forked_sleeper() -> tuple[int, int]:
    """A child that inherits every open descriptor and keeps it until it is killed; its pid,
    and the pipe's write end it waits on (kept open here until then)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: waits for a byte that never comes, never returns into the test
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    return pid, write


def _kill(child: tuple[int, int]) -> None:
    pid, write = child
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(write)


def test_a_lock_ends_with_its_block_though_a_child_forked_inside_it_lives_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "snapshot.lock"
    with fsutil.file_lock(path):
        child = _forked_sleeper()
        assert fsutil.try_file_lock(path) is None  # held
    try:
        again = fsutil.try_file_lock(path)
        assert again is not None, "the forked child kept the lock"
        again.release()
    finally:
        _kill(child)


def test_a_held_lock_released_is_free_though_a_child_forked_while_it_was_held(
    tmp_path: Path,
) -> None:
    path = tmp_path / "blob.lock"
    held = fsutil.try_file_lock(path)
    assert held is not None
    child = _forked_sleeper()
    held.release()
    held.release()  # again is harmless
    try:
        again = fsutil.try_file_lock(path)
        assert again is not None, "the forked child kept the lock"
        again.release()
    finally:
        _kill(child)
