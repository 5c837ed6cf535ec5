from __future__ import annotations

import logging
import os
import socket

from celery import shared_task
from celery.signals import worker_ready

from nexus.redact import public_error
from training_app.runner import training_job_run
from training_app.services import training_job_claim, training_job_fail, training_jobs_reap, training_jobs_requeue

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, soft_time_limit=24 * 3600, time_limit=24 * 3600 + 300)
def run_training_job(self, job_id: int) -> None:
    if not training_job_claim(job_id=job_id, worker=self.request.hostname or socket.gethostname()):
        log.info("training job %s is not queued (duplicate delivery or cancelled); nothing to do", job_id)
        return
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        training_job_run(job_id=job_id)
    except BaseException as exc:  # SoftTimeLimitExceeded and friends: never leave it 'running'
        training_job_fail(job_id=job_id, error=public_error(exc, what="Training"))
        raise


@worker_ready.connect
def _reap_on_start(sender=None, **kwargs) -> None:  # noqa: ANN001
    # A job still 'running' under this worker's name when it starts lost its worker; work whose
    # message was never sent (broker down at the time) is sent again.
    from datasets_app.services import datasets_requeue

    reaped = training_jobs_reap(worker=getattr(sender, "hostname", None) or socket.gethostname())
    if reaped:
        log.warning("marked jobs %s failed: their worker restarted", reaped)
    try:
        training_jobs_requeue()
        datasets_requeue()
    except Exception:  # noqa: BLE001 - start-up must not fail because the broker hiccups
        log.exception("could not re-send queued work")
