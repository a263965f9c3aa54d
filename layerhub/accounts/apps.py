from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Teams, their members' roles, API tokens and the audit log."""

    name = "layerhub.accounts"
