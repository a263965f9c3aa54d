"""``{% load humansize %}`` then ``{{ bytes|humansize }}`` prints ``72.8MB``."""

from __future__ import annotations

from django import template

from layerhub.core.humanize import human_size

register = template.Library()


@register.filter(name="humansize")
def humansize(value: object) -> str:
    """A byte count as ``docker images`` shows it; empty for anything that is not a size."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return ""
    try:
        size = float(value)
        return human_size(size)
    except ValueError:
        return ""
