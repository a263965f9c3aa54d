"""The one place that decides what a user may see and do.

Every page, and later every API endpoint and CLI path acting for a user, filters through
``restrict``. Today any signed-in user may see and do everything; teams and roles will narrow
this function, not the views.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)

VIEW = "view"
CHANGE = "change"
DELETE = "delete"


def restrict(queryset: QuerySet[M], user: Any, action: str = VIEW) -> QuerySet[M]:
    """``queryset`` narrowed to what ``user`` may ``action``: nothing for anonymous users."""
    if user is None or not user.is_authenticated:
        return queryset.none()
    return queryset
