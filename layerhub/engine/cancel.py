"""Stopping long engine work when its caller asks: a cancelled pull, push, import or export
stops at its next chunk, an unpack at its next layer.

The caller passes a ``should_stop`` callable (no argument, True to stop); the engine calls
it at its stop points and raises ``Cancelled`` there, so whatever was being written is
discarded on the way out by the code that already cleans up after a failure (a blob writer
in tmp/, a snapshot being built in tmp/, an export's partial file).
"""

from __future__ import annotations

from collections.abc import Callable

StopFn = Callable[[], bool]


class Cancelled(Exception):
    """The caller asked the work to stop. Not a LayerhubError: nobody's input was wrong."""


def never() -> bool:
    """The default stop check: go on."""
    return False


def stop_point(should_stop: StopFn, what: str = "work") -> None:
    """Raise Cancelled if the caller has asked to stop."""
    if should_stop():
        raise Cancelled(f"{what} was cancelled")
