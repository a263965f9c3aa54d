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
        # an offset PostgreSQL refuses (past 15:59) is read, in UTC
        ("2026-11-01T10:00:00+23:17", datetime(2026, 10, 31, 10, 43, tzinfo=UTC)),
        # a time UTC cannot hold is no creation time
        ("0001-01-01T00:00:00+05:00", None),
    ],
)
def test_created_is_read_or_left_out(text: str | None, expected: datetime | None) -> None:
    found = _created(text)
    assert found == expected
    if found is not None:
        assert found.utcoffset() is not None
        assert found.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
