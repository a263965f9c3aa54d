"""Template tag libraries of layerhub.core."""

from __future__ import annotations
