"""App configuration for layerhub.jobs."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    """Background jobs (pull, unpack, import) and their progress."""

    name = "layerhub.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Make layerhub's Celery app current in every process (web, CLI, worker), without
        # importing the tasks and every service behind them: job_enqueue sends tasks by name,
        # and only eager mode (tests) loads them, on first use. A CLI command starts faster.
        import workers.celery  # noqa: F401
