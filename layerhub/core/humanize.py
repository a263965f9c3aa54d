"""Sizes for people, printed the way ``docker images`` prints them."""

from __future__ import annotations

import math

DECIMAL_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")


def human_size(size: float, *, precision: int = 3) -> str:
    """``size`` bytes as Docker shows them: decimal units, ``precision`` significant digits.

    The same as go-units' ``HumanSizeWithPrecision(size, 3)`` that ``docker images`` uses
    (``72.8MB``, ``1.02kB``, ``0B``), except near a unit boundary: where Docker prints
    ``1e+03MB`` (docker/cli#3091) this carries on to the next unit and prints ``1GB``.
    """
    if not math.isfinite(size) or size < 0:
        raise ValueError(f"not a size in bytes: {size}")
    value = float(size)
    unit = 0
    last = len(DECIMAL_UNITS) - 1
    while value >= 1000 and unit < last:
        value /= 1000
        unit += 1
    text = f"{value:.{precision}g}"
    if float(text) >= 1000 and unit < last:
        value /= 1000
        unit += 1
        text = f"{value:.{precision}g}"
    return f"{text}{DECIMAL_UNITS[unit]}"
