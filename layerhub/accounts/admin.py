"""The admin site's view of the audit log: read-only, as everywhere on the site."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from layerhub.accounts.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Audit entries can be read and searched here; nobody adds, changes or deletes one."""

    list_display = ("at", "actor_name", "team", "action", "target")
    list_filter = ("action", "team")
    search_fields = ("actor_name", "action", "target")
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
