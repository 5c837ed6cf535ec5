"""Distillation as a kind of job (see nexus/jobs): on the CPU queue. Every teacher answer is stored
as it arrives, so a row whose worker is gone is queued again and resumes where it was."""
from __future__ import annotations

from nexus.jobs import JobKind, register, requeue

DISTILLATION = register(JobKind(
    name="distillation", label="Distillation", model="datasets_app.DistillationJob", queue="cpu",
    waiting="queued", working=("running",),
    run="datasets_app.distillation.jobs.run", fail="datasets_app.distillation.jobs.fail",
    orphaned="datasets_app.distillation.jobs.orphaned",
    loader="datasets_app.distillation.selectors.distillation_job_get", lock=5,
    time_limit_s=24 * 3600, stale_after_s=900, claim_message="Distillation started on {worker}",
    resend_filter={"cancel_requested": False}))


def run(job_id: int) -> None:
    from datasets_app.distillation.runner import distillation_run

    distillation_run(job_id=job_id)


def fail(*, job_id: int, error: str) -> None:
    from datasets_app.distillation.services import distillation_job_fail

    distillation_job_fail(job_id=job_id, error=error)


def orphaned(row) -> None:  # noqa: ANN001
    requeue(DISTILLATION, row.pk, f"The worker running this job ({row.worker}) stopped; resuming from the answers "
                                  "already stored (none is asked for again)")
