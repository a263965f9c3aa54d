"""REST API (DRF viewsets): not written yet."""

from __future__ import annotations
