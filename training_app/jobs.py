"""Training as a kind of job (see nexus/jobs): on the GPU queue; a job whose worker is gone resumes
from its last checkpoint, or fails when it has none."""
from __future__ import annotations

from django.utils import timezone

from nexus.jobs import JobKind, register


def _claim_fields() -> dict:
    return {"pause_requested": False, "checkpoint_requested": False, "started_at": timezone.now()}


TRAINING = register(JobKind(
    name="training", label="Training", model="training_app.FineTuningJob", queue="gpu",
    waiting="queued", working=("preparing", "training", "evaluating", "exporting"),
    run="training_app.jobs.run", fail="training_app.services.training_job_fail",
    orphaned="training_app.services.training_job_orphaned", loader="training_app.selectors.training_job_get",
    lock=2, time_limit_s=24 * 3600, stale_after_s=15 * 60,
    claim_message="Preparing on {worker}: loading the base model and encoding the data",
    claimed="training_app.jobs.claimed", claim_fields=_claim_fields, resend_filter={"cancel_requested": False}))


def claimed(*, job_id: int, worker: str) -> None:
    # signals sent while it waited were answered by the row (pause/cancel of a queued job)
    from nexus.control import control_clear

    control_clear(kind=TRAINING.name, job_id=job_id)


def run(job_id: int) -> None:
    import os

    import torch

    from training_app.runner import training_job_run

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    training_job_run(job_id=job_id)
