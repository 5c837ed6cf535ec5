from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from datasets_app.models import Dataset
from datasets_app.selectors import dataset_get
from nexus.control import control_send
from nexus.errors import NexusError
from nexus.jobs import enqueue, event, requeue, status_event
from nexus.quotas import quota_check
from nexus.models import BaseModel, JobEvent, Team
from training_app.engine.config import (
    DESIGN_TARGET_MODULES,
    SECTIONS,
    ConfigError,
    JobConfig,
    given_fields,
    merge_sections,
    parse_job_config,
    total_steps_for,
)
from training_app.jobs import TRAINING
from training_app.models import FineTuningJob
from nexus.catalog import hf_meta

RUNNING = FineTuningJob.RUNNING


def _control(job_id: int, command: str) -> None:
    # after commit: the worker must find the row's flag set when the signal reaches it
    transaction.on_commit(lambda: control_send(kind=JobEvent.Kind.TRAINING, job_id=job_id, command=command))


def _resolve_base_model(value: Any, *, user, team: Team | None = None) -> BaseModel:
    """A catalog model the user (or, given, the team) may use, that can be fine-tuned."""
    from nexus.catalog import base_model_lookup

    model = base_model_lookup(user=user, value=value, team=team)
    if not model.trainable:
        raise NexusError(f"base_model: '{model.name}' has no local HF folder, so it cannot be fine-tuned",
                         code="validation_error", details={"base_model": "not trainable"})
    return model


def preset_resolve(*, user, preset: Any) -> dict[str, Any]:
    """A built-in preset by slug, or one of the user's teams' presets by id (404 otherwise)."""
    from training_app.presets import BUILTIN_BY_ID, preset_out

    if str(preset) in BUILTIN_BY_ID:
        return preset_out(BUILTIN_BY_ID[str(preset)], builtin=True, team=None)
    if not re.fullmatch(r"[0-9]{1,18}", str(preset)):
        raise NexusError(f"preset: unknown preset '{preset}' (built-in: {', '.join(BUILTIN_BY_ID)})",
                         code="validation_error", details={"preset": str(preset)})
    from nexus.teams import get_for_user
    from training_app.models import TrainingPreset

    p = get_for_user(TrainingPreset.objects.all(), user, pk=int(preset))
    return preset_out({"id": p.pk, "name": p.name, "description": p.description, "lora_config": p.lora_config,
                       "training_config": p.training_config, "qlora_config": p.qlora_config}, builtin=False, team=p.team_id)


def _config_error(exc: ConfigError) -> NexusError:
    return NexusError(str(exc), code="validation_error", details=exc.errors)


def parse_config(lora_config: Any, training_config: Any, qlora_config: Any) -> JobConfig:
    """The design's config from a request's sections (any accepted spelling), or a 400 naming the field."""
    try:
        return parse_job_config(lora_config, training_config, qlora_config)
    except ConfigError as exc:
        raise _config_error(exc) from exc


def _with_preset(user, preset: Any, lora: Any, training: Any, qlora: Any) -> tuple[Any, Any, Any]:
    """The preset's configs with the caller's fields on top (no preset: as given)."""
    if preset in (None, ""):
        return lora, training, qlora
    p = preset_resolve(user=user, preset=preset)
    try:
        return tuple(merge_sections(name, p[name], given) for name, given in zip(SECTIONS, (lora, training, qlora)))
    except ConfigError as exc:
        raise _config_error(exc) from exc


def job_config_for_model(*, model: BaseModel, lora_config: Any, training_config: Any, qlora_config: Any):
    """Parse the config and check it against the model. Given values must fit it (target modules
    it has, a max_seq_length within its context); the design's defaults that do not fit are
    replaced by the nearest that does, and each replacement is returned as a warning.
    Returns (config, model info, warnings)."""
    from training_app.engine.modelinfo import model_info

    config = parse_config(lora_config, training_config, qlora_config)
    info = model_info(hf_meta(model))
    warnings: list[str] = []
    lc, tc = config.lora, config.training
    if "target_modules" not in given_fields("lora_config", lora_config) and info.linear_modules:
        missing = [t for t in DESIGN_TARGET_MODULES if t not in info.linear_modules]
        if missing:
            lc.target_modules = info.default_targets()
            warnings.append(f"lora_config.target_modules: {model.name} has no {', '.join(missing)}, so the default "
                            f"seven projections do not apply; using its architecture's default: "
                            f"{', '.join(lc.target_modules)}")
    if info.linear_modules and lc.target_modules != "all-linear":
        unknown = [t for t in lc.target_modules if t not in info.linear_modules]
        if unknown:
            message = (f"lora_config.target_modules: {', '.join(unknown)} not in {model.name} "
                       f"(its linear modules: {', '.join(info.linear_modules)}, or 'all-linear')")
            raise NexusError(message, code="validation_error", details={"lora_config.target_modules": message})
    if info.context_length and tc.max_seq_length > info.context_length:
        if "max_seq_length" in given_fields("training_config", training_config):
            message = (f"training_config.max_seq_length: {tc.max_seq_length} is longer than the "
                       f"{info.context_length}-token context of {model.name}")
            raise NexusError(message, code="validation_error", details={"training_config.max_seq_length": message})
        warnings.append(f"training_config.max_seq_length: the default {tc.max_seq_length} is longer than the "
                        f"{info.context_length}-token context of {model.name}; using {info.context_length}")
        tc.max_seq_length = info.context_length
    return config, info, warnings


@transaction.atomic
def training_job_create(
    *,
    team: Team,
    user,
    name: str,
    base_model: Any,
    dataset_id: int,
    description: str = "",
    lora_config: dict | None = None,
    training_config: dict | None = None,
    qlora_config: dict | None = None,
    preset: Any = None,
    eval_dataset_id: int | None = None,
) -> FineTuningJob:
    lora_config, training_config, qlora_config = _with_preset(user, preset, lora_config, training_config, qlora_config)
    parse_config(lora_config, training_config, qlora_config)  # field errors first, before model checks
    model = _resolve_base_model(base_model, user=user, team=team)
    config, _, warnings = job_config_for_model(model=model, lora_config=lora_config, training_config=training_config,
                                               qlora_config=qlora_config)
    dataset = _usable_dataset(user=user, team=team, pk=dataset_id, field="dataset_id")
    eval_dataset = _usable_dataset(user=user, team=team, pk=eval_dataset_id, field="eval_dataset_id") \
        if eval_dataset_id else None
    tc = config.training
    if eval_dataset is not None and tc.validation_split:
        raise NexusError("eval_dataset_id: give either a validation dataset or training_config.validation_split, not both",
                         code="validation_error", details={"eval_dataset_id": "conflicts with validation_split"})
    if eval_dataset is not None and eval_dataset.pk == dataset.pk:
        raise NexusError("eval_dataset_id: the validation dataset must not be the training dataset", code="validation_error",
                         details={"eval_dataset_id": "same as dataset_id"})
    if tc.early_stopping_patience and eval_dataset is None and not tc.validation_split:
        message = ("training_config.early_stopping_patience: early stopping needs validation data (eval_dataset_id or "
                   "training_config.validation_split)")
        raise NexusError(message, code="validation_error", details={"training_config.early_stopping_patience": message})
    if tc.early_stopping_patience and not tc.load_best_model_at_end:
        message = ("training_config.early_stopping_patience: early stopping keeps the best checkpoint, so it needs "
                   "training_config.load_best_model_at_end")
        raise NexusError(message, code="validation_error", details={"training_config.early_stopping_patience": message})
    quota_check(team=team, kind="active_training_jobs")
    job = FineTuningJob(team=team, created_by=user, name=name.strip(), description=description, base_model=model,
                        dataset=dataset, eval_dataset=eval_dataset, warnings=warnings, **config.as_dicts())
    job.full_clean()
    job.save()
    status_event(TRAINING, job.pk, "queued", f"Queued: {model.name} on '{dataset.name}' ({dataset.num_examples} examples)")
    for warning in warnings:
        event(TRAINING, job.pk, warning, level="warning", data={"warning": warning})
    enqueue(TRAINING, job.pk)
    return job


def _usable_dataset(*, user, team: Team, pk: int, field: str) -> Dataset:
    dataset = dataset_get(user=user, pk=pk)
    if dataset.team_id != team.pk:
        raise NexusError(f"{field}: the dataset belongs to another team", code="validation_error",
                         details={field: "belongs to another team"})
    if dataset.status != Dataset.Status.READY:
        raise NexusError(f"{field}: dataset '{dataset.name}' is not ready (status: {dataset.status})",
                         code="dataset_not_ready", details={field: dataset.status})
    return dataset


@transaction.atomic
def training_job_pause(*, job: FineTuningJob) -> FineTuningJob:
    """Running: the trainer saves a checkpoint after the current step and stops. Queued: paused at once."""
    job = FineTuningJob.objects.select_for_update().get(pk=job.pk)
    if job.status == FineTuningJob.Status.QUEUED:
        job.status = FineTuningJob.Status.PAUSED
        job.save(update_fields=["status", "updated_at"])
        status_event(TRAINING, job.pk, "paused", "Paused before it started")
    elif job.status in RUNNING and not job.pause_requested:
        job.pause_requested = True
        job.save(update_fields=["pause_requested", "updated_at"])
        event(TRAINING, job.pk, "Pause requested; the trainer saves a checkpoint after the current step", level="warning")
        _control(job.pk, "pause")
    elif job.status not in RUNNING:
        raise NexusError(f"A {job.status} job cannot be paused.", code="invalid_state", status_code=409)
    return job


@transaction.atomic
def training_job_resume(*, job: FineTuningJob) -> FineTuningJob:
    """paused -> queued; the worker continues from the last checkpoint. A running job whose pause
    has not taken effect yet keeps training (the request is withdrawn)."""
    job = FineTuningJob.objects.select_for_update().get(pk=job.pk)
    if job.status in RUNNING and job.pause_requested:
        job.pause_requested = False
        job.save(update_fields=["pause_requested", "updated_at"])
        event(TRAINING, job.pk, "Pause withdrawn; training continues")
        _control(job.pk, "resume")
        return job
    if job.status != FineTuningJob.Status.PAUSED:
        raise NexusError(f"Only a paused job can be resumed; this one is {job.status}.", code="invalid_state", status_code=409)
    job.status = FineTuningJob.Status.QUEUED
    job.pause_requested = False
    job.save(update_fields=["status", "pause_requested", "updated_at"])
    status_event(TRAINING, job.pk, "queued", "Resume requested: queued to continue from the last checkpoint")
    enqueue(TRAINING, job.pk)
    return job


@transaction.atomic
def training_job_cancel(*, job: FineTuningJob) -> FineTuningJob:
    job = FineTuningJob.objects.select_for_update().get(pk=job.pk)
    if job.status in (FineTuningJob.Status.QUEUED, FineTuningJob.Status.PAUSED):
        job.status = FineTuningJob.Status.CANCELLED
        job.cancel_requested = True
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "cancel_requested", "finished_at", "updated_at"])
        status_event(TRAINING, job.pk, "cancelled", "Cancelled before it (re)started")
    elif job.status in RUNNING and not job.cancel_requested:
        job.cancel_requested = True
        job.save(update_fields=["cancel_requested", "updated_at"])
        event(TRAINING, job.pk, "Cancel requested; the trainer stops after the current step", level="warning")
        _control(job.pk, "stop")
    return job


@transaction.atomic
def training_job_request_checkpoint(*, job: FineTuningJob) -> FineTuningJob:
    """A training job saves a checkpoint (adapter, optimizer, scheduler, RNG) after the current step."""
    job = FineTuningJob.objects.select_for_update().get(pk=job.pk)
    if job.status not in RUNNING or job.cancel_requested:
        raise NexusError(f"Only a running job can save a checkpoint on request; this one is {job.status}.",
                         code="invalid_state", status_code=409)
    if not job.checkpoint_requested:
        job.checkpoint_requested = True
        job.save(update_fields=["checkpoint_requested", "updated_at"])
        event(TRAINING, job.pk, "Checkpoint requested; the trainer saves one after the current step")
        _control(job.pk, "checkpoint")
    return job


@transaction.atomic
def preset_create(*, team: Team, user, name: str, description: str = "", lora_config: dict | None = None,
                  training_config: dict | None = None, qlora_config: dict | None = None):
    from training_app.models import TrainingPreset
    from training_app.presets import BUILTIN_BY_ID

    config = parse_config(lora_config, training_config, qlora_config)
    # stored in the design's spelling, with only the fields given (the rest stay the defaults)
    given = {}
    for (section, values), raw in zip(config.as_dicts().items(), (lora_config, training_config, qlora_config)):
        keep = given_fields(section, raw)
        given[section] = {k: v for k, v in values.items() if k in keep}
    if name.strip().lower() in {p["name"].lower() for p in BUILTIN_BY_ID.values()} or \
            TrainingPreset.objects.filter(team=team, name__iexact=name.strip()).exists():
        raise NexusError(f"name: a preset called '{name}' already exists", code="validation_error", details={"name": name})
    preset = TrainingPreset(team=team, created_by=user, name=name.strip(), description=description, **given)
    preset.full_clean()
    preset.save()
    return preset


def training_estimate(*, user, base_model: Any, dataset_id: int | None = None, preset: Any = None,
                      lora_config: dict | None = None, training_config: dict | None = None,
                      qlora_config: dict | None = None, device: str = "cuda") -> dict[str, Any]:
    """Memory broken down from the model's real config, and time from throughput measured here."""
    from training_app.engine.data import load_tokenizer, template_overhead
    from training_app.engine.estimate import estimate_memory, estimate_time
    from training_app.selectors import measured_throughput

    lora_config, training_config, qlora_config = _with_preset(user, preset, lora_config, training_config, qlora_config)
    model = _resolve_base_model(base_model, user=user)
    config, info, warnings = job_config_for_model(model=model, lora_config=lora_config, training_config=training_config,
                                                  qlora_config=qlora_config)
    memory = estimate_memory(info, model.parameter_count, config, device=device)
    tps, jobs = measured_throughput(model=model)
    time_estimate: dict[str, Any] = {"available": False, "reason": "name a dataset to estimate the time"}
    if dataset_id:
        dataset = dataset_get(user=user, pk=dataset_id)
        time_estimate = estimate_time(total_tokens=dataset.total_tokens, num_examples=dataset.num_examples,
                                      num_usable=dataset.num_usable,
                                      template_tokens=template_overhead(load_tokenizer(hf_meta(model)))[0],
                                      training=config.training, tokens_per_second=tps)
        time_estimate["steps"] = total_steps_for(config, dataset.num_usable)
        if jobs:
            time_estimate["measured_by_jobs"] = jobs
    return {"base_model": model.name, "config": config.as_dicts(), "warnings": warnings, "memory": memory,
            "time": time_estimate}


def training_job_fail(*, job_id: int, error: str) -> FineTuningJob:
    with transaction.atomic():
        job = FineTuningJob.objects.select_for_update().get(pk=job_id)
        if job.status not in FineTuningJob.ACTIVE:
            return job
        job.status = FineTuningJob.Status.FAILED
        job.error = error
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "error", "finished_at", "updated_at"])
        status_event(TRAINING, job.pk, "failed", f"Failed: {error}", level="error")
    return job


def training_job_orphaned(job: FineTuningJob) -> None:
    """The worker running `job` is gone: it resumes from its last checkpoint on whichever worker
    takes it, or fails visibly when it has none."""
    from training_app.artifacts import latest_checkpoint_step

    step = latest_checkpoint_step(job)
    if step is None:
        training_job_fail(job_id=job.pk, error="The worker running this job stopped (restart or crash) before its "
                                               "first checkpoint; its logs are kept. Start a new job to train again.")
        return
    requeue(TRAINING, job.pk, f"The worker running this job ({job.worker}) stopped; resuming from the checkpoint at "
                              f"step {step}")


def training_job_checkpoint_to_adapter(*, job: FineTuningJob, step: int):
    """Turn a saved checkpoint into an adapter of its own (`<job name>@step<N>`)."""
    import tempfile

    from adapters_app.services import adapter_create_from_job
    from training_app.artifacts import checkpoint_adapter_folder
    from training_app.engine.checkpoints import checkpoint_losses, copy_adapter_files

    with checkpoint_adapter_folder(job, step) as checkpoint, tempfile.TemporaryDirectory() as tmp:
        loss, eval_loss = checkpoint_losses(checkpoint)
        copy_adapter_files(checkpoint, Path(tmp))
        adapter = adapter_create_from_job(job=job, adapter_dir=Path(tmp), final_loss=loss, name=f"{job.name}@step{step}",
                                          checkpoint_step=step,
                                          metrics={"steps": step, "final_loss": loss, "eval_loss": eval_loss})
    event(TRAINING, job.pk, f"Checkpoint at step {step} saved as adapter '{adapter.name}' v{adapter.version}", data={"adapter_id": adapter.pk})
    return adapter
