"""Starting image jobs: a pull or an import is recorded as a job and queued for a worker.

Kept apart from pull.py, which runs those jobs, so that what starts one (``manage.py pull``,
``manage.py import``, a form) imports no registry client, archive reader or store code: a
warm ``pull`` from the command line is mostly Python start-up, and every import counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from layerhub.accounts.models import Team
from layerhub.accounts.services import audit
from layerhub.core.permissions import CHANGE, PULL, require
from layerhub.engine.errors import ArchiveError
from layerhub.engine.manifest import Platform, parse_platform
from layerhub.engine.reference import parse_reference
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_start


def image_pull(
    *,
    reference: str,
    team: Team,
    platform: str | None = None,
    user: AbstractBaseUser | None = None,
) -> Job:
    """Queue a pull of ``reference`` into ``team``'s catalog, with the team's registry login;
    raises InvalidReference (or InvalidManifest for a bad platform) at once, before any job
    exists."""
    ref = parse_reference(reference)
    if user is not None:
        require(user, PULL, team)
    # no platform asked: an index gives linux/amd64, a single-platform image is taken as is
    plat = str(parse_platform(platform)) if platform else ""
    with transaction.atomic():
        job = job_start(
            kind=Job.Kind.PULL,
            user=user,
            team=team,
            reference=str(ref),
            params={"platform": plat},
        )
        audit(actor=user, action="image.pull", team=team, target=str(ref), job=job.pk)
    return job


def image_import(
    *,
    path: str,
    team: Team,
    platform: str | None = None,
    user: Any = None,
    upload: bool = False,
) -> Job:
    """Queue the import of a ``docker save`` archive or an OCI layout (directory or tar)
    that the workers can read at ``path``. With ``upload`` the file is the job's own (an
    archive uploaded through the browser) and is deleted when the job ends."""
    if user is not None:
        require(user, CHANGE, team)
    target = Path(path).resolve()
    if not target.exists():
        raise ArchiveError(f"{path}: no such file or directory")
    plat = parse_platform(platform) if platform else Platform()
    params: dict[str, Any] = {"path": str(target), "platform": str(plat)}
    if upload:
        params["upload"] = True
    with transaction.atomic():
        job = job_start(
            kind=Job.Kind.IMPORT,
            user=user,
            team=team,
            reference=str(target),
            params=params,
        )
        audit(actor=user, action="image.import", team=team, target=target.name, job=job.pk)
    return job
