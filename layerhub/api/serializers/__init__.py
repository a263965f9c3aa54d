"""The API's serializers, one module per area: brief and nested, no business logic."""

from __future__ import annotations
