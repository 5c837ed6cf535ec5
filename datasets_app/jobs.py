"""Dataset processing as a kind of job (see nexus/jobs): on the CPU queue; processing starts again
from the untouched original, so a row whose worker is gone is simply queued again."""
from __future__ import annotations

from nexus.jobs import JobKind, register, requeue

DATASET = register(JobKind(
    name="dataset", label="Processing", model="datasets_app.Dataset", queue="cpu",
    waiting="uploading", working=("processing",),
    run="datasets_app.jobs.run", fail="datasets_app.jobs.fail", orphaned="datasets_app.jobs.orphaned",
    loader="datasets_app.selectors.dataset_get", lock=1, time_limit_s=1800, stale_after_s=2400,
    claim_message="Processing started on {worker}"))


def run(job_id: int) -> None:
    from datasets_app.services import dataset_process

    dataset_process(dataset_id=job_id)


def fail(*, job_id: int, error: str) -> None:
    from datasets_app.models import Dataset
    from datasets_app.services import dataset_fail

    dataset_fail(dataset=Dataset.objects.get(pk=job_id), message=error)


def orphaned(row) -> None:  # noqa: ANN001
    requeue(DATASET, row.pk, "Processing was interrupted (worker lost); processing again")


from datasets_app.distillation.jobs import DISTILLATION  # noqa: E402,F401  (registered with the kit here)
