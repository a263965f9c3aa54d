"""An image config's ``created`` is read whatever its form (as Docker and registries write it)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from layerhub.images.services.pull import _created


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-01T10:00:00Z", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T10:00:00.123456789Z", datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        # no zone at all: taken as UTC (this raised AttributeError when Django dropped timezone.utc)
        ("2026-11-01T10:00:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("", None),
        (None, None),
        ("yesterday", None),
        ("2026-13-45T99:00:00Z", None),
    ],
)
def test_created_is_read_or_left_out(text: str | None, expected: datetime | None) -> None:
    assert _created(text) == expected
