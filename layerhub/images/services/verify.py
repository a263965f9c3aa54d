"""The verify job: the store walked and compared with the catalog, in a worker, with the
report kept on the job row for the page to show."""

from __future__ import annotations

from typing import Any

from layerhub.engine.errors import LayerhubError
from layerhub.images.verify import VerifyReport, store_verify
from layerhub.jobs.models import Job
from layerhub.jobs.services import job_run, job_start

# how many findings the job's error line names (the report on the row has the rest)
NAMED_IN_ERROR = 3


class StoreMismatch(LayerhubError):
    """The store and the catalog disagree: sizes, orphans or missing files."""


def store_verify_start(*, user: Any = None) -> Job:
    """Queue a verify of the whole store."""
    return job_start(kind=Job.Kind.VERIFY, user=user, reference="store")


def store_verify_run(*, job_id: int) -> None:
    """The verify job: walk, keep the report in ``job.params["report"]``, and fail the job
    with a one-line summary when anything differs."""
    job = Job.objects.get(pk=job_id)
    if not job.claim():
        return

    def work() -> None:
        report = store_verify()
        job.params = {**job.params, "report": report.to_json()}
        job.save(update_fields=["params"])
        if not report.ok:
            named = "; ".join(f.line() for f in report.findings[:NAMED_IN_ERROR])
            more = report.problems - min(report.problems, NAMED_IN_ERROR)
            raise StoreMismatch(
                f"{report.summary()}: {named}" + (f"; and {more} more" if more else "")
            )

    job_run(job, work)


def store_verify_report(job: Job) -> VerifyReport | None:
    """The report a verify job stored (None until it has run)."""
    data = job.params.get("report") if isinstance(job.params, dict) else None
    return VerifyReport.from_json(data) if isinstance(data, dict) else None
