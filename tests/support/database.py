"""The test database as a URL, for the processes a test starts (workers, manage.py, gunicorn)
so that they read and write the rows the test sees: SQLite's file or PostgreSQL's test database."""

from __future__ import annotations

from django.db import connection


def database_url() -> str:
    """``DATABASE_URL`` for a child process sharing this test's database."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    return f"postgres://{user}@{host}:{db.get('PORT') or 5432}/{db['NAME']}"
