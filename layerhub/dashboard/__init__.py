"""Dashboard app: the server-rendered pages people use in the browser."""

from __future__ import annotations
