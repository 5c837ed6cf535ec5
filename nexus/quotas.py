"""Per-team quotas on work that spends the machine: a request past one is a 429 that names it."""
from __future__ import annotations

from django.conf import settings

from nexus.errors import NexusError
from nexus.models import Team


def _active(kind: str, team: Team) -> int:
    if kind == "live_deployments":
        from deployments_app.models import Deployment

        return Deployment.objects.filter(team=team, status__in=Deployment.LIVE).count()
    if kind == "active_training_jobs":
        from training_app.models import FineTuningJob

        return FineTuningJob.objects.filter(team=team, status__in=FineTuningJob.ACTIVE).count()
    if kind == "active_exports":
        from adapters_app.models import AdapterExport

        return AdapterExport.objects.filter(team=team, status__in=AdapterExport.ACTIVE).count()
    if kind == "processing_datasets":
        from datasets_app.models import Dataset

        return Dataset.objects.filter(team=team, status__in=(Dataset.Status.UPLOADING, Dataset.Status.PROCESSING)).count()
    if kind == "active_distillations":
        from datasets_app.models import DistillationJob

        return DistillationJob.objects.filter(team=team, status__in=DistillationJob.ACTIVE).count()
    if kind == "active_evaluations":
        from evaluation_app.models import ACTIVE, BenchmarkJob, ComparisonSession, JudgeRun, PerformanceTest

        return sum(m.objects.filter(team=team, status__in=ACTIVE).count()
                   for m in (ComparisonSession, JudgeRun, PerformanceTest, BenchmarkJob))
    raise ValueError(kind)


WHAT = {"live_deployments": "live deployments (starting or running)",
        "active_training_jobs": "training jobs queued, running or paused",
        "active_exports": "exports queued or running",
        "processing_datasets": "datasets waiting for or in processing",
        "active_distillations": "distillation jobs queued or running",
        "active_evaluations": "comparison runs, judge runs, speed tests and benchmark jobs queued or running"}


def quota_check(*, team: Team, kind: str) -> None:
    """Call inside the transaction that adds one more: the team row is locked so two requests at
    once cannot both take the last place."""
    limit = getattr(settings, f"NEXUS_QUOTA_{kind.upper()}")
    Team.objects.select_for_update().filter(pk=team.pk).first()
    count = _active(kind, team)
    if count >= limit:
        raise NexusError(
            f"Quota reached: team '{team.name}' has {count} {WHAT[kind]}, the most NEXUS_QUOTA_{kind.upper()} allows "
            f"({limit}). Wait for one to end (or stop one), or ask the operator to raise the quota.",
            code="quota_exceeded", status_code=429, details={"quota": f"NEXUS_QUOTA_{kind.upper()}", "limit": limit,
                                                            "current": count})
