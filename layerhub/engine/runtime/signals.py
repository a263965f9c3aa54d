"""SIGTERM and SIGINT during a run: stop it through the same clean-up an error takes.

By default SIGTERM ends a Python process on the spot: no ``finally`` runs, so runc, the
command and the overlay mount outlive it, and a later sweep of ``tmp/`` could delete the
container's files through that mount. ``signals_raise`` turns the first SIGTERM or SIGINT
into ``Interrupted``, an exception every clean-up path already handles.

Clean-up itself must not be cut short by a second signal (or by the first arriving while it
runs): code inside ``shielded()`` records a signal and raises it only once it is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A signal stopped the run; raised once what the run set up has been undone.

    A BaseException, like KeyboardInterrupt: no ``except Exception`` may swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        """What a shell reports for a command a signal ended (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + self.signum


class _State(threading.local):
    def __init__(self) -> None:
        self.installed = False
        self.shield_depth = 0
        self.pending: int | None = None
        self.raised = False


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.raised or _state.pending is not None:
        return  # already on the way out: clean-up must finish
    if _state.shield_depth:
        _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """For the block, the first of ``signals`` raises ``Interrupted`` (later ones are
    ignored while clean-up runs). Only the main thread can take signals: elsewhere, and when
    already installed, this does nothing."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in signals}
    _state.installed, _state.pending, _state.raised = True, None, False
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _state.installed = False


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run clean-up to its end: a stop signal arriving meanwhile is raised after it."""
    _state.shield_depth += 1
    try:
        yield
    finally:
        _state.shield_depth -= 1
        if _state.shield_depth == 0 and _state.pending is not None and not _state.raised:
            signum, _state.pending = _state.pending, None
            _state.raised = True
            raise Interrupted(signum)
