"""App configuration for layerhub.jobs."""

from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    """Background jobs (pull, unpack, import) and their progress."""

    name = "layerhub.jobs"
    label = "jobs"

    def ready(self) -> None:
        # Make layerhub's Celery app current, with its tasks registered, in every process
        # (web, CLI, worker): job_enqueue then finds tasks by name, and eager mode runs them
        # in place, without services importing the workers package.
        import workers.tasks  # noqa: F401
