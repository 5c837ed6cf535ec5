from __future__ import annotations

import logging

from celery import shared_task

from datasets_app.models import Dataset
from datasets_app.services import dataset_claim, dataset_fail, dataset_process
from nexus.redact import public_error

log = logging.getLogger(__name__)


@shared_task(acks_late=True, soft_time_limit=1800, time_limit=1900)
def process_dataset(dataset_id: int) -> None:
    if not dataset_claim(dataset_id=dataset_id):
        log.info("dataset %s is not waiting for processing; nothing to do", dataset_id)
        return
    try:
        dataset_process(dataset_id=dataset_id)
    except Exception as exc:  # the dataset must never stay 'processing'
        log.exception("processing dataset %s failed", dataset_id)
        dataset_fail(dataset=Dataset.objects.get(pk=dataset_id), message=public_error(exc, what="Processing"))
