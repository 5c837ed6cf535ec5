"""Enqueueing after commit, without turning a broker outage into a half-created job."""
from __future__ import annotations

import logging
from typing import Any, Callable

from django.db import transaction

log = logging.getLogger(__name__)


def enqueue_on_commit(task: Any, object_id: int, *, on_error: Callable[[Exception], None]) -> None:
    """Send `task.delay(object_id)` once the row is committed. If the broker cannot be reached the
    row stays queued (and `on_error` records why); the reaper re-sends it later."""

    def send() -> None:
        try:
            task.delay(object_id)
        except Exception as exc:  # noqa: BLE001 - kombu raises several types for an unreachable broker
            log.exception("could not enqueue %s(%s)", task.name, object_id)
            on_error(exc)

    transaction.on_commit(send)


QUEUE_ERROR = ("Could not reach the task queue ({error}); it stays {status} and is sent again when a worker "
               "starts or `manage.py nexus_reap_jobs` runs.")
