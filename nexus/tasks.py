"""The job kit's Celery side: one task runs a claimed row of any kind, with transient failures
retried and everything else recorded on the row; the reaper runs at worker start and from beat;
every worker heartbeats and also consumes its host's queue."""
from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

from nexus.jobs import claim, event, is_transient, kind_get
from nexus.jobs.workers import HeartbeatThread, host_name, host_queue, visibility_timeout_check
from nexus.redact import public_error

log = logging.getLogger(__name__)
MAX_RETRIES = 5


def retry_delay(retries: int) -> int:
    """Seconds before the next try: 10, 20, 40, 80, 160 (capped at 10 minutes)."""
    return min(600, 10 * 2 ** retries)


@shared_task(bind=True, name="nexus.jobs.run", acks_late=True)
def run_job(self, kind_name: str, job_id: int, held_by: str = "") -> None:
    """`held_by`: on a retry, the worker that held the row when the transient failure came (the
    retry may land on another worker, which takes the row over)."""
    kind = kind_get(kind_name)
    worker = self.request.hostname or host_name()
    if not claim(kind, job_id, worker=worker, held_by=held_by):
        log.info("%s %s is not waiting (duplicate delivery, cancelled or held elsewhere); nothing to do", kind.name, job_id)
        return
    try:
        kind.call("run", job_id)
    except BaseException as exc:  # noqa: BLE001 - SoftTimeLimitExceeded too: a row is never left held
        if is_transient(exc) and self.request.retries < MAX_RETRIES:
            delay = retry_delay(self.request.retries)
            try:
                event(kind, job_id, f"{kind.label} hit a temporary problem ({type(exc).__name__}); trying again in "
                                    f"{delay} s (attempt {self.request.retries + 2} of {MAX_RETRIES + 1})",
                      level="warning")
            except Exception:  # noqa: BLE001 - the database may be what is down; the retry still comes
                log.warning("could not record the retry of %s %s", kind.name, job_id)
            raise self.retry(exc=exc, countdown=delay, kwargs={"held_by": worker}) from exc
        kind.call("fail", job_id=job_id, error=public_error(exc, what=kind.label))
        if not isinstance(exc, Exception):
            raise


@shared_task(name="nexus.jobs.reap", ignore_result=True)
def reap_jobs() -> str:
    from nexus.jobs.reaper import reap

    return reap().summary()


@shared_task(name="nexus.jobs.check_host", ignore_result=True)
def check_host(kind_name: str, host: str) -> None:
    """Runs on `host` (its own queue): the kind checks its live rows there (processes, logs)."""
    if host != host_name():
        log.warning("a check for host %r reached %r; ignored", host, host_name())
        return
    kind_get(kind_name).call("host_check", host=host)


@celeryd_after_setup.connect
def _consume_host_queue(sender, instance, **kwargs) -> None:  # noqa: ANN001
    visibility_timeout_check()  # SystemExit (not caught by Celery's signal dispatch) refuses the start
    instance.app.amqp.queues.select_add(host_queue(host_name()))


_heartbeat: HeartbeatThread | None = None


@worker_ready.connect
def _on_worker_ready(sender=None, **kwargs) -> None:  # noqa: ANN001
    """Start heartbeating, then reap: what a previous run of this worker (same name) held is
    orphaned for sure; the rest is the reaper's usual round."""
    global _heartbeat
    name = getattr(sender, "hostname", None) or host_name()
    queues = [q.name for q in sender.app.amqp.queues.consume_from.values()] if sender else []
    _heartbeat = HeartbeatThread(name=name, queues=queues)
    _heartbeat.start()
    from nexus.jobs.reaper import reap

    try:
        own = reap(worker=name, resend=False, check_hosts=False)
        done = reap()
        log.info("reaper at start: %s; %s", own.summary(), done.summary())
    except Exception:  # noqa: BLE001 - start-up must not fail because the broker or database hiccups
        log.exception("the reaper could not run at worker start; beat runs it again")


@worker_shutdown.connect
def _on_worker_shutdown(sender=None, **kwargs) -> None:  # noqa: ANN001
    if _heartbeat is not None:
        _heartbeat.stop()

