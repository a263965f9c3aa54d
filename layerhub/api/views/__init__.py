"""The API's viewsets, one module per area."""

from __future__ import annotations
