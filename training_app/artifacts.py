"""Where a training job's files live. Its working folder is on the host that runs it; on an object
store (several hosts) each checkpoint is uploaded the moment the trainer has saved it, complete only
once its marker is written, and a job that resumes, on this host or another, starts from the newest
complete checkpoint in the store. On the local folder (one machine) the working folder is the truth."""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from django.conf import settings

from nexus.errors import NexusError
from nexus.storage import cache_path, complete_folders, is_remote, stage_down, stage_up, storage_delete_prefix
from training_app.engine.checkpoints import ADAPTER_FILES, checkpoint_list, checkpoint_step, checkpoints
from training_app.models import FineTuningJob


def job_key(job: FineTuningJob) -> str:
    """The creation time is part of the name, so a job never picks up another's checkpoints (ids
    start again after a database is reset or restored)."""
    return f"job-{job.pk}-{job.created_at:%Y%m%d%H%M%S%f}"


def job_output_dir(job: FineTuningJob) -> Path:
    """The job's working folder on this host (checkpoints under trainer/, the adapter under adapter/)."""
    if is_remote():
        return cache_path("jobs", job_key(job))
    if job.output_dir:
        return Path(job.output_dir)
    return Path(settings.NEXUS_DATA_DIR) / "jobs" / job_key(job)


def _store_prefix(job: FineTuningJob) -> str:
    return f"jobs/{job_key(job)}/checkpoints"


def checkpoint_summary(folder: Path) -> dict[str, Any]:
    """What the checkpoint list shows, read from the folder before it is uploaded."""
    state = json.loads((folder / "trainer_state.json").read_text())
    history = state.get("log_history", [])
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    best = state.get("best_model_checkpoint")
    return {"step": checkpoint_step(folder), "loss": losses[-1] if losses else None,
            "eval_loss": evals[-1] if evals else None, "best_step": checkpoint_step(Path(best)) if best else None,
            "has_optimizer_state": (folder / "optimizer.pt").is_file(),
            "created_at": datetime.fromtimestamp(folder.stat().st_mtime, tz=timezone.utc).isoformat()}


def checkpoint_upload(job: FineTuningJob, step: int) -> None:
    """Store the checkpoint the trainer has just saved (its marker last); drop stored checkpoints the
    trainer has rotated away on this host (save_total_limit)."""
    if not is_remote():
        return
    trainer_dir = job_output_dir(job) / "trainer"
    folder = trainer_dir / f"checkpoint-{step}"
    stage_up(folder, f"{_store_prefix(job)}/checkpoint-{step}", summary=checkpoint_summary(folder))
    local = {checkpoint_step(p) for p in checkpoints(job_output_dir(job))}
    if job.training_config.get("save_total_limit") and local:
        for name, manifest in complete_folders(_store_prefix(job)).items():
            if manifest["summary"]["step"] < min(local):
                storage_delete_prefix(f"{_store_prefix(job)}/{name}")


def job_checkpoints(job: FineTuningJob) -> list[dict[str, Any]]:
    """Saved checkpoints, oldest first (`is_best`: the lowest validation loss so far)."""
    if not is_remote():
        return checkpoint_list(job_output_dir(job))
    found = sorted((m["summary"] | {"size_bytes": m["size_bytes"]} for m in complete_folders(_store_prefix(job)).values()),
                   key=lambda c: c["step"])
    best = found[-1]["best_step"] if found else None
    return [{"step": c["step"], "size_bytes": c["size_bytes"], "created_at": c["created_at"],
             "has_optimizer_state": c["has_optimizer_state"], "is_best": c["step"] == best} for c in found]


def latest_checkpoint_step(job: FineTuningJob) -> int | None:
    found = job_checkpoints(job)
    return found[-1]["step"] if found else None


def prepare_resume(job: FineTuningJob) -> Path:
    """The working folder, holding exactly the checkpoints complete in the store (the newest staged
    down if this host lacks it): a checkpoint this host saved but never finished uploading is not
    resumed from, so every host resumes from the same step."""
    output_dir = job_output_dir(job)
    if not is_remote():
        return output_dir
    stored = {m["summary"]["step"] for m in complete_folders(_store_prefix(job)).values()}
    trainer_dir = output_dir / "trainer"
    for path in checkpoints(output_dir) if trainer_dir.is_dir() else []:
        if checkpoint_step(path) not in stored:
            shutil.rmtree(path, ignore_errors=True)
    for partial in trainer_dir.glob("checkpoint-*") if trainer_dir.is_dir() else []:
        if not (partial / "trainer_state.json").is_file():  # cut short while saving
            shutil.rmtree(partial, ignore_errors=True)
    if stored:
        newest = max(stored)
        stage_down(f"{_store_prefix(job)}/checkpoint-{newest}", into=trainer_dir / f"checkpoint-{newest}")
    return output_dir


@contextmanager
def checkpoint_adapter_folder(job: FineTuningJob, step: int) -> Iterator[Path]:
    """A local folder with the checkpoint's PEFT adapter files and trainer state."""
    if not is_remote():
        found = {checkpoint_step(p): p for p in checkpoints(job_output_dir(job))}
        if step not in found:
            raise _no_checkpoint(step, sorted(found))
        yield found[step]
        return
    steps = sorted(c["step"] for c in job_checkpoints(job))
    if step not in steps:
        raise _no_checkpoint(step, steps)
    yield stage_down(f"{_store_prefix(job)}/checkpoint-{step}", only=(*ADAPTER_FILES, "trainer_state.json"))


def _no_checkpoint(step: int, available: list[int]) -> NexusError:
    return NexusError(f"No checkpoint at step {step}; available: {available or 'none'}", code="not_found", status_code=404)
