"""Pulling an image in a test, through the job as the dashboard does."""

from __future__ import annotations

from layerhub.images.models import Image
from layerhub.images.services import image_pull
from layerhub.jobs.models import Job
from tests.support.teams import default_team


def pulled(reference: str) -> Image:
    """The image ``reference`` pulled by the default team (the pull must succeed)."""
    job = image_pull(team=default_team(), reference=reference)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.image is not None
    return job.image
