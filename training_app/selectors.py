from __future__ import annotations

from django.db.models import QuerySet

from nexus.events import job_events_after
from nexus.models import JobEvent
from nexus.teams import get_for_user, visible_to
from training_app.models import FineTuningJob


def training_job_list(*, user, team=None) -> QuerySet[FineTuningJob]:
    """The user's teams' jobs, each with its final adapter's id and path (one query for the page)."""
    from django.db.models import OuterRef, Subquery

    from adapters_app.models import LoRAAdapter

    final = LoRAAdapter.objects.filter(job=OuterRef("pk"), source="job").order_by("-version")
    qs = visible_to(FineTuningJob.objects.select_related("team", "base_model", "dataset"), user).annotate(
        final_adapter_id=Subquery(final.values("pk")[:1]), final_adapter_path=Subquery(final.values("path")[:1]))
    return qs.filter(team=team) if team is not None else qs


def training_job_get(*, user, pk: int, write: bool = False) -> FineTuningJob:
    return get_for_user(FineTuningJob.objects.select_related("team", "base_model", "dataset"), user, pk=pk, write=write)


def training_job_events(*, job: FineTuningJob, after: int = 0, limit: int | None = None) -> list[JobEvent]:
    return job_events_after(kind=JobEvent.Kind.TRAINING, job_id=job.pk, after=after, limit=limit)


def training_job_curves(*, job: FineTuningJob) -> dict[str, list[dict]]:
    """Training loss per step and validation loss per evaluation, one point per step: after a
    resume from a checkpoint, steps trained again replace the old ones."""
    curves: dict[str, list[dict]] = {"train": [], "eval": []}
    for e in JobEvent.objects.filter(job_kind=JobEvent.Kind.TRAINING, job_id=job.pk, type=JobEvent.Type.METRIC).order_by("seq"):
        points = curves["eval" if "eval_loss" in e.data else "train"]
        while points and points[-1]["step"] >= e.data["step"]:
            points.pop()
        points.append(e.data)
    return curves


def training_job_loss_curve(*, job: FineTuningJob) -> list[dict]:
    return training_job_curves(job=job)["train"]


def preset_list(*, user) -> list[dict]:
    from training_app.models import TrainingPreset
    from training_app.presets import BUILTIN_PRESETS, preset_out

    builtin = [preset_out(p, builtin=True, team=None) for p in BUILTIN_PRESETS]
    own = [preset_out({"id": p.pk, "name": p.name, "description": p.description, "lora_config": p.lora_config,
                       "training_config": p.training_config, "qlora_config": p.qlora_config}, builtin=False, team=p.team_id)
           for p in visible_to(TrainingPreset.objects.all(), user)]
    return builtin + own


def measured_throughput(*, model) -> tuple[float | None, list[int]]:
    """Training tokens/s on this deployment for a base model: the last five completed jobs."""
    jobs = [j for j in FineTuningJob.objects.filter(base_model=model, status=FineTuningJob.Status.COMPLETED)
            .order_by("-finished_at")[:5] if j.metrics.get("tokens_seen") and j.metrics.get("train_runtime_s")]
    if not jobs:
        return None, []
    return sum(j.metrics["tokens_seen"] for j in jobs) / sum(j.metrics["train_runtime_s"] for j in jobs), [j.pk for j in jobs]


def training_job_metrics(*, job: FineTuningJob) -> dict:
    """Per-step metrics and validation losses, with an ETA from the recent step time."""
    curves = training_job_curves(job=job)
    points = curves["train"]
    eta = None
    if points and job.status in FineTuningJob.RUNNING:
        recent = [p.get("seconds_per_step") for p in points[-10:] if p.get("seconds_per_step")]
        if recent:
            eta = round((job.total_steps - job.current_step) * sum(recent) / len(recent))
    return {"status": job.status, "current_step": job.current_step, "total_steps": job.total_steps,
            "eta_seconds": eta, "current_loss": job.current_loss, "current_eval_loss": job.current_eval_loss,
            "best_eval_loss": job.best_eval_loss, "best_checkpoint_step": job.best_checkpoint_step,
            "peak_memory_bytes": job.metrics.get("peak_memory_bytes"), "results": points, "eval": curves["eval"]}


def training_job_logs(*, job: FineTuningJob, offset: int, limit: int, level: str | None = None) -> dict:
    qs = JobEvent.objects.filter(job_kind=JobEvent.Kind.TRAINING, job_id=job.pk).exclude(type=JobEvent.Type.METRIC)
    if level:
        qs = qs.filter(level=level)
    total = qs.count()
    return {"count": total, "offset": offset, "limit": limit,
            "results": [e.as_message() for e in qs.order_by("seq")[offset:offset + limit]]}


def training_job_checkpoints(*, job: FineTuningJob) -> list[dict]:
    """Saved checkpoints, oldest first; `is_best` marks the one with the lowest validation loss."""
    from training_app.artifacts import job_checkpoints

    return job_checkpoints(job)
