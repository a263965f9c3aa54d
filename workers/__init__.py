"""Celery workers: the app and thin tasks that call services. ``celery -A workers worker``."""

from __future__ import annotations

from workers.celery import app

__all__ = ["app"]
