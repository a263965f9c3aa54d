"""Running blob transfers a few at a time, as pulls and pushes do."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait


def run_bounded(
    jobs: Sequence[Callable[[], None]],
    *,
    concurrency: int,
    heartbeat: Callable[[], None] | None = None,
    knock_on: type[BaseException] = InterruptedError,
) -> None:
    """Run ``jobs`` at most ``concurrency`` at a time and wait for all of them.

    ``heartbeat``, if given, is called from this thread about twice a second meanwhile (to save
    progress, say). If any job fails, the first real failure is raised, not the ``knock_on``
    errors the other jobs raise when they stop because of it.
    """
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(job) for job in jobs]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.5)
            if heartbeat is not None:
                heartbeat()
    errors = [exc for f in futures if (exc := f.exception()) is not None]
    errors.sort(key=lambda exc: isinstance(exc, knock_on))
    if errors:
        raise errors[0]
