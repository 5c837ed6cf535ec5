"""A claimed job on its training worker: the engine's hooks write progress to the row (the source
of truth) and its events, and read the control channel; the outcome ends the job."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from datasets_app.services import dataset_load_records
from nexus.control import control_receive
from nexus.errors import NexusError
from nexus.jobs import event, is_transient, status_event
from nexus.models import JobEvent
from nexus.redact import public_error
from nexus.catalog import hf_weights
from training_app.artifacts import checkpoint_upload, prepare_resume
from training_app.engine.config import parse_job_config
from training_app.models import FineTuningJob
from training_app.jobs import TRAINING
from training_app.services import RUNNING, training_job_fail

DB_POLL_SECONDS = 5.0  # the worker re-reads the job's row this often, in case a control message was lost


class _JobHooks:
    """Bridges engine callbacks to the database (the source of truth) and the job's group, and
    reads the job's control channel after every step."""

    def __init__(self, job: FineTuningJob):
        self.job = job
        self._db_polled = 0.0

    def log(self, message: str, level: str = "info") -> None:
        event(TRAINING, self.job.pk, message, level=level)
        # every log line is also a heartbeat for the stale-job reaper
        FineTuningJob.objects.filter(pk=self.job.pk).update(updated_at=timezone.now())

    def warn(self, message: str) -> None:
        """A setting the run could not honour as asked: logged, and kept on the job's `warnings`
        (once, though a resumed run meets it again)."""
        with transaction.atomic():
            job = FineTuningJob.objects.select_for_update().get(pk=self.job.pk)
            if message not in job.warnings:
                job.warnings = [*job.warnings, message]
                job.save(update_fields=["warnings", "updated_at"])
            event(TRAINING, job.pk, message, level="warning", data={"warning": message})

    def on_start(self, *, total_steps: int, num_examples: int, num_eval_examples: int) -> None:
        self.job.total_steps = total_steps
        self.job.save(update_fields=["total_steps", "updated_at"])
        validation = f" (validation: {num_eval_examples} examples)" if num_eval_examples else ""
        self._set_status(FineTuningJob.Status.TRAINING, f"Training started: {total_steps} steps over {num_examples} examples{validation}")

    def on_phase(self, phase: str) -> None:
        messages = {"training": "Training", "evaluating": f"Evaluating: validation loss at step {self.job.current_step}",
                    "exporting": "Exporting: saving the adapter"}
        self._set_status(phase, messages[phase])

    def _set_status(self, status: str, message: str) -> None:
        with transaction.atomic():
            changed = FineTuningJob.objects.filter(pk=self.job.pk, status__in=RUNNING).exclude(status=status).update(
                status=status, updated_at=timezone.now())
            if changed:
                self.job.status = status
                status_event(TRAINING, self.job.pk, status, message)

    def on_step(self, metrics: dict[str, Any]) -> None:
        job = self.job
        with transaction.atomic():
            job.current_step = metrics["step"]
            job.total_steps = metrics["total_steps"] or job.total_steps
            job.progress = round(100.0 * job.current_step / max(job.total_steps, 1), 2)
            job.current_epoch = metrics["epoch"]
            job.current_loss = metrics["loss"]
            job.best_loss = metrics["loss"] if job.best_loss is None else min(job.best_loss, metrics["loss"])
            job.tokens_per_second = metrics["tokens_per_second"]
            peak = max(metrics["peak_memory_bytes"], job.metrics.get("peak_memory_bytes") or 0)
            job.metrics = {**job.metrics, "last": metrics, "tokens_seen": metrics["tokens_seen"],
                           "supervised_tokens_seen": metrics["supervised_tokens_seen"], "peak_memory_bytes": peak}
            job.save(update_fields=["current_step", "total_steps", "progress", "current_epoch", "current_loss", "best_loss",
                                    "tokens_per_second", "metrics", "updated_at"])
            event(TRAINING, job.pk, f"step {metrics['step']}/{metrics['total_steps']} loss {metrics['loss']:.4f} "
                   f"lr {metrics['learning_rate']:.2e} {metrics['tokens_per_second']:.0f} tok/s",
                   type=JobEvent.Type.METRIC, data=metrics)

    def on_evaluate(self, metrics: dict[str, Any]) -> None:
        job = self.job
        with transaction.atomic():
            job.current_eval_loss = metrics["eval_loss"]
            job.best_eval_loss = metrics["best_eval_loss"]
            job.best_checkpoint_step = metrics["best_step"]
            job.save(update_fields=["current_eval_loss", "best_eval_loss", "best_checkpoint_step", "updated_at"])
            event(TRAINING, job.pk, f"step {metrics['step']} validation loss {metrics['eval_loss']:.4f} "
                   f"(best {metrics['best_eval_loss']:.4f} at step {metrics['best_step']})",
                   type=JobEvent.Type.METRIC, data=metrics)

    def on_checkpoint(self, step: int, *, reason: str) -> None:
        why = {"request": " on request", "pause": " to pause"}.get(reason, "")
        checkpoint_upload(self.job, step)  # in the object store before it is announced (or paused on)
        with transaction.atomic():
            if reason == "request":
                FineTuningJob.objects.filter(pk=self.job.pk).update(checkpoint_requested=False)
            event(TRAINING, self.job.pk, f"Checkpoint saved at step {step}{why}", data={"checkpoint_step": step, "reason": reason})

    def poll(self) -> set[str]:
        """Commands for this step: the Redis channel every step, the row every few seconds (or
        whenever Redis cannot be reached). The row wins: a job ended elsewhere (reaped) stops."""
        import time

        commands: set[str] = set()
        received = control_receive(kind=JobEvent.Kind.TRAINING, job_id=self.job.pk)
        for command in received or []:
            if command == "resume":
                commands.discard("pause")
            else:
                commands.add(command)
        if received is None or time.monotonic() - self._db_polled >= DB_POLL_SECONDS or commands:
            self._db_polled = time.monotonic()
            row = FineTuningJob.objects.filter(pk=self.job.pk).values(
                "status", "cancel_requested", "pause_requested", "checkpoint_requested").first()
            if row is None or row["status"] not in RUNNING or row["cancel_requested"]:
                return {"stop"}
            # the row decides pause (a withdrawn pause may still be on the channel), and adds lost signals
            commands.discard("pause")
            if row["pause_requested"]:
                commands.add("pause")
            if row["checkpoint_requested"]:
                commands.add("checkpoint")
        return commands


def training_job_run(*, job_id: int) -> FineTuningJob:
    """Train a claimed job to the end; records completed / paused / cancelled / failed with its logs kept."""
    from adapters_app.services import adapter_create_from_job
    from training_app.engine.trainer import train

    job = FineTuningJob.objects.select_related("base_model", "dataset", "eval_dataset", "team").get(pk=job_id)
    try:
        output_dir = prepare_resume(job)  # on an object store: the newest complete stored checkpoint, on any host
        FineTuningJob.objects.filter(pk=job.pk).update(output_dir=str(output_dir))
        config = parse_job_config(job.lora_config, job.training_config, job.qlora_config)
        folder = Path(hf_weights(job.base_model))
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise NexusError(f"The base model '{job.base_model.name}' has no weights on this worker: its HF folder "
                             "holds no .safetensors (or .bin) file. Register it again with its weights.",
                             code="model_missing")
        records = dataset_load_records(dataset=job.dataset)
        eval_records = dataset_load_records(dataset=job.eval_dataset) if job.eval_dataset_id else None
        if config.training.num_gpus > 1:  # one process per GPU under torchrun; rank 0 reports through _JobHooks
            from training_app.distributed import train_on_gpus

            result = train_on_gpus(job_id=job.pk, model_dir=str(folder), records=records, eval_records=eval_records,
                                   config=config, output_dir=output_dir)
        else:
            result = train(model_dir=str(folder), records=records, eval_records=eval_records, config=config,
                           output_dir=output_dir, hooks=_JobHooks(job))
        job.refresh_from_db()
        if result.status == "paused":
            with transaction.atomic():
                if FineTuningJob.objects.filter(pk=job.pk, status__in=RUNNING).update(
                        status=FineTuningJob.Status.PAUSED, pause_requested=False, updated_at=timezone.now()):
                    status_event(TRAINING, job.pk, "paused", f"Paused at step {result.steps} of {result.total_steps}")
            job.refresh_from_db()
            return job
        if result.status == "cancelled":
            if job.status not in RUNNING:
                return job  # ended elsewhere while training (reaped): keep that outcome
            return _finish(job, FineTuningJob.Status.CANCELLED, f"Cancelled at step {result.steps} of {result.total_steps}")
        job.metrics = {**job.metrics, "train_runtime_s": round(result.runtime_s, 2), "tokens_seen": result.tokens_seen,
                       "supervised_tokens_seen": result.supervised_tokens,
                       "peak_memory_bytes": max(result.peak_memory_bytes, job.metrics.get("peak_memory_bytes") or 0),
                       "best_eval_loss": result.best_eval_loss, "best_step": result.best_step,
                       "stopped_early": result.stopped_early, "config": asdict(config.training)}
        job.save(update_fields=["metrics", "updated_at"])
        adapter = adapter_create_from_job(job=job, adapter_dir=result.adapter_dir, final_loss=result.final_loss, metrics={
            "steps": result.steps, "final_loss": result.final_loss, "best_eval_loss": result.best_eval_loss,
            "best_step": result.best_step, "train_runtime_s": round(result.runtime_s, 2),
            "tokens_seen": result.tokens_seen, "stopped_early": result.stopped_early})
        event(TRAINING, job.pk, f"Adapter '{adapter.name}' v{adapter.version} saved ({adapter.size_bytes / 1e6:.1f} MB)",
               data={"adapter_id": adapter.pk})
        early = " (stopped early)" if result.stopped_early else ""
        loss = f"; final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        return _finish(job, FineTuningJob.Status.COMPLETED, f"Completed {result.steps} steps in {result.runtime_s:.0f}s{early}{loss}")
    except Exception as exc:  # noqa: BLE001 - every failure is recorded: a sentence here, the traceback in the log
        if is_transient(exc):
            raise  # the job kit tries again with backoff, from the last checkpoint
        return training_job_fail(job_id=job.pk, error=public_error(exc, what="Training"))


def _finish(job: FineTuningJob, status: str, message: str) -> FineTuningJob:
    """running -> a final state; a job that was already ended (e.g. reaped) keeps its state."""
    with transaction.atomic():
        fields = {"status": status, "finished_at": timezone.now(), "updated_at": timezone.now()}
        if status == FineTuningJob.Status.COMPLETED:
            fields["progress"] = 100.0
        if FineTuningJob.objects.filter(pk=job.pk, status__in=RUNNING).update(**fields):
            status_event(TRAINING, job.pk, status, message, level="info" if status == FineTuningJob.Status.COMPLETED else "warning")
    job.refresh_from_db()
    return job

