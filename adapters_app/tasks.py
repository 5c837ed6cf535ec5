from __future__ import annotations

import logging
import socket

from celery import shared_task
from celery.signals import worker_ready

from adapters_app.exports import export_claim, export_fail, export_run, exports_reap, exports_requeue
from nexus.redact import public_error

log = logging.getLogger(__name__)


@shared_task(bind=True, acks_late=True, soft_time_limit=6 * 3600, time_limit=6 * 3600 + 300)
def run_adapter_export(self, export_id: int) -> None:
    if not export_claim(export_id=export_id, worker=self.request.hostname or socket.gethostname()):
        log.info("export %s is not queued (duplicate delivery); nothing to do", export_id)
        return
    try:
        export_run(export_id=export_id)
    except BaseException as exc:  # SoftTimeLimitExceeded and friends: never leave it running
        export_fail(export_id=export_id, error=public_error(exc, what="The export"))
        raise


@worker_ready.connect
def _reap_exports_on_start(sender=None, **kwargs) -> None:  # noqa: ANN001
    reaped = exports_reap(worker=getattr(sender, "hostname", None) or socket.gethostname())
    if reaped:
        log.warning("exports %s lost their worker; queued again", reaped)
    try:
        exports_requeue()
    except Exception:  # noqa: BLE001 - start-up must not fail because the broker hiccups
        log.exception("could not re-send queued exports")
