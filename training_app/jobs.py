"""Training as a kind of job (see nexus/jobs): on the GPU queue (`gpu.<N>` for a job on N GPUs of one
host); a job whose worker is gone resumes from its last checkpoint, or fails when it has none."""
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
    claimed="training_app.jobs.claimed", claim_fields=_claim_fields, resend_filter={"cancel_requested": False},
    queue_for="training_app.jobs.queue_for"))


def gpu_queue(num_gpus: int) -> str:
    """`gpu` for one GPU; `gpu.<N>` for N, consumed by a worker started with `-Q gpu.<N>` on a host
    whose CUDA_VISIBLE_DEVICES lists N GPUs (Celery creates the queue when it is first used)."""
    return TRAINING.queue if num_gpus <= 1 else f"{TRAINING.queue}.{num_gpus}"


def queue_for(job_id: int) -> str:
    from training_app.models import FineTuningJob

    num_gpus = FineTuningJob.objects.filter(pk=job_id).values_list("training_config__num_gpus", flat=True).first()
    return gpu_queue(num_gpus or 1)


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
