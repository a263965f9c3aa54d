"""``{% load teams %}`` then ``{% reads_audit user as show_audit %}``: whether the
navigation offers the audit log (team owners and staff)."""

from __future__ import annotations

from typing import Any

from django import template

from layerhub.accounts.views.audit import reads_audit as _reads_audit

register = template.Library()


@register.simple_tag
def reads_audit(user: Any) -> bool:
    """Whether ``user`` may open the audit log."""
    return _reads_audit(user)
