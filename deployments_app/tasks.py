"""Celery adapters for deployments (cpu queue): take an id, call the service."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready

from deployments_app.services import deployment_fail, deployment_launch, deployments_reap
from nexus.redact import public_error

log = logging.getLogger(__name__)


@shared_task(acks_late=True, soft_time_limit=40 * 60, time_limit=40 * 60 + 60)
def start_deployment(deployment_id: int) -> None:
    try:
        deployment_launch(deployment_id=deployment_id)
    except BaseException as exc:  # SoftTimeLimitExceeded and friends: never leave it 'starting'
        deployment_fail(deployment_id=deployment_id, error=public_error(exc, what="Starting the server"))
        raise


@worker_ready.connect
def _reap_deployments_on_start(sender=None, **kwargs) -> None:  # noqa: ANN001
    # Servers run detached, so a worker restart leaves them up; only those whose process died are reaped.
    try:
        reaped = deployments_reap()
    except Exception:  # noqa: BLE001 - start-up must not fail because of a reap
        log.exception("could not reap deployments")
        return
    if reaped:
        log.warning("marked deployments %s failed: their llama.cpp server is gone", reaped)
