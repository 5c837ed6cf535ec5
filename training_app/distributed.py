"""A claimed job on several GPUs of its worker's host (`training_config.num_gpus` > 1).

The worker task (the launcher) hands the ranks what it prepared (local model and output folders,
the config, the records) and starts the engine under torchrun (training_app/engine/distributed.py);
each rank is a Django process (`python -m training_app.distributed SPEC`). Rank 0 reports through
the runner's hooks (events, metrics, checkpoints, warnings, and the control channel it polls); the
other ranks' hooks write nothing. Rank 0's result file ends the job in the runner as a single
process's TrainResult would."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# nothing of Django up here: a rank imports this module before django.setup()
from training_app.engine import distributed
from training_app.engine.config import JobConfig
from training_app.engine.trainer import TrainResult

ENTRY = "training_app.distributed"


def train_on_gpus(*, job_id: int, model_dir: str | Path, records: list[dict], config: JobConfig,
                  output_dir: str | Path, eval_records: list[dict] | None = None) -> TrainResult:
    """`train()` of a job on `config.training.num_gpus` processes of this host; returns rank 0's
    result once no rank is left. A failure on rank 0 comes back as the single process would raise it
    (a sentence, or a transient error the job kit retries)."""
    import torch
    from django.conf import settings

    from nexus.errors import NexusError
    from nexus.jobs import TransientError

    num_gpus = config.training.num_gpus
    if torch.cuda.is_available() and torch.cuda.device_count() < num_gpus:
        raise NexusError(f"training_config.num_gpus: {num_gpus} GPUs asked, but this worker sees "
                         f"{torch.cuda.device_count()} (its CUDA_VISIBLE_DEVICES); start the worker for queue "
                         f"gpu.{num_gpus} on a host with {num_gpus} GPUs", code="validation_error")
    data = distributed.run(ENTRY, num_gpus, model_dir=model_dir, output_dir=output_dir, config=config, records=records,
                           eval_records=eval_records, cwd=settings.BASE_DIR, job_id=job_id)
    if "error" in data:
        raise (TransientError if data["transient"] else NexusError)(data["error"])
    return distributed.result_from(data)


def main(argv: list[str]) -> None:
    here = distributed.rank_start()  # first: a rank never outlives its launcher, even during start-up
    import django

    django.setup()
    from nexus.jobs import is_transient
    from nexus.redact import public_error
    from training_app.engine.trainer import NullHooks
    from training_app.models import FineTuningJob
    from training_app.runner import _JobHooks

    spec = distributed.read_spec(argv[0])
    hooks: Any = NullHooks()
    try:
        if here.main:
            hooks = _JobHooks(FineTuningJob.objects.select_related("team").get(pk=spec.extra["job_id"]))
        distributed.train_rank(spec, hooks)
    except Exception as exc:  # noqa: BLE001 - rank 0 tells the launcher; the traceback goes to this rank's log
        if here.main:
            distributed.write_result(spec.result, error=public_error(exc, what="Training"),
                                     transient=is_transient(exc))
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
