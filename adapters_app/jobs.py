"""Merges and GGUF exports as a kind of job (see nexus/jobs): on the CPU queue; an export whose
worker is gone starts again from the beginning (its work folder is temporary)."""
from __future__ import annotations

from django.utils import timezone

from nexus.jobs import JobKind, register, requeue

EXPORT = register(JobKind(
    name="export", label="The export", model="adapters_app.AdapterExport", queue="cpu",
    waiting="queued", working=("running", "verifying"),
    run="adapters_app.jobs.run", fail="adapters_app.jobs.fail", orphaned="adapters_app.jobs.orphaned",
    loader="adapters_app.selectors.export_get", lock=3, time_limit_s=6 * 3600, touched="heartbeat_at",
    claim_fields=lambda: {"started_at": timezone.now()}))


def run(job_id: int) -> None:
    from adapters_app.exports import export_run

    export_run(export_id=job_id)


def fail(*, job_id: int, error: str) -> None:
    from adapters_app.exports import export_fail

    export_fail(export_id=job_id, error=error)


def orphaned(row) -> None:  # noqa: ANN001
    requeue(EXPORT, row.pk, "The worker running this export stopped; queued again", progress=0.0,
            stage="queued again")
