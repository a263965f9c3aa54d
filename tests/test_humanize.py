"""Sizes as ``docker images`` prints them."""

from __future__ import annotations

import re

import pytest
from django.template import Context, Template
from hypothesis import given
from hypothesis import strategies as st

from layerhub.core.humanize import DECIMAL_UNITS, human_size


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, "0B"),
        (1, "1B"),
        (999, "999B"),
        (1000, "1kB"),
        (1024, "1.02kB"),
        (1500, "1.5kB"),
        (13_256, "13.3kB"),
        (72_800_000, "72.8MB"),
        (72_849_999, "72.8MB"),
        (123_456_789, "123MB"),
        (1_000_000_000, "1GB"),
        (5_368_709_120, "5.37GB"),
        (2**40, "1.1TB"),
        (10**15, "1PB"),
    ],
)
def test_matches_docker(size: int, expected: str) -> None:
    assert human_size(size) == expected


@pytest.mark.parametrize(
    ("size", "expected"),
    [(999_999, "1MB"), (999_674_558, "1GB"), (999_500_000_000, "1TB")],
)
def test_carries_to_the_next_unit_where_docker_prints_an_exponent(size: int, expected: str) -> None:
    assert human_size(size) == expected


@pytest.mark.parametrize("size", [-1, float("nan"), float("inf")])
def test_refuses_what_is_not_a_size(size: float) -> None:
    with pytest.raises(ValueError, match="not a size"):
        human_size(size)


SHAPE = re.compile(r"^(\d{1,3}(?:\.\d{1,2})?)(" + "|".join(DECIMAL_UNITS) + r")$")


@given(st.integers(min_value=0, max_value=10**26))
def test_always_three_digits_and_close(size: int) -> None:
    text = human_size(size)
    match = SHAPE.match(text)
    assert match, text
    number, unit = match.groups()
    shown = float(number) * 1000 ** DECIMAL_UNITS.index(unit)
    assert abs(shown - size) <= 0.005 * max(size, 1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(72_800_000, "72.8MB"), (0, "0B"), ("1500", "1.5kB"), (None, ""), ("many", ""), (-5, "")],
)
def test_template_filter(value: object, expected: str) -> None:
    template = Template("{% load humansize %}{{ value|humansize }}")
    assert template.render(Context({"value": value})) == expected
