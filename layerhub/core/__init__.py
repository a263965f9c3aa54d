"""Core app: the glue between Django and the engine's layer store, and small shared helpers."""

from __future__ import annotations
