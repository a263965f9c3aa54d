"""The REST API under ``/api/v1/``: DRF viewsets of a few lines over the services and
selectors, every queryset through ``layerhub.core.permissions.restrict``, one JSON error shape,
an OpenAPI schema at ``/api/schema/`` and its docs page at ``/api/docs/``."""

from __future__ import annotations
