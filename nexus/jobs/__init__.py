"""The job kit: the one way long-running work is declared, claimed, run, recorded and reaped.

A kind is declared once (`JobKind`, in its app's `jobs.py`); services then use these functions
with it. See docs/architecture.md, "The job kit", for the recipe of a new kind."""
from __future__ import annotations

import logging
from typing import Any, Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nexus.jobs.kinds import JobKind, kind_get, kinds, register

log = logging.getLogger(__name__)

__all__ = ["JobKind", "TransientError", "claim", "enqueue", "event", "is_transient", "kind_get", "kinds", "register",
           "requeue", "status_event", "transition"]

QUEUE_ERROR = ("Could not reach the task queue ({error}); it stays {status} and is sent again within a minute "
               "(the reaper re-sends waiting work that the queue does not hold).")


class TransientError(Exception):
    """A failure that may pass (a teacher's 429 or 5xx, a server still starting): the kit retries
    the run with backoff instead of failing the job."""


def is_transient(exc: BaseException) -> bool:
    """Broker, database-connection and Redis failures, and TransientError: worth trying again.
    Everything else (the user's input, our own checks) fails the job at once."""
    from django.db import InterfaceError, OperationalError
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, (TransientError, OperationalError, InterfaceError, BrokerError, RedisConnectionError,
                            RedisTimeoutError))


def event(kind: JobKind, job_id: int, message: str, *, level: str = "info", type: str = "log",
          data: dict | None = None):
    """Record an event of a job (in order, pushed to its websocket group after commit)."""
    from nexus.events import job_event_record

    return job_event_record(kind=kind.name, job_id=job_id, message=message, level=level, type=type, data=data)


def status_event(kind: JobKind, job_id: int, status: str, message: str, *, level: str = "info",
                 data: dict | None = None):
    return event(kind, job_id, message, level=level, type="status", data={"status": status, **(data or {})})


def transition(kind: JobKind, job_id: int, *, to: str, frm: Iterable[str], message: str, level: str = "info",
               data: dict | None = None, **fields: Any) -> bool:
    """Move a row from one of `frm` to `to` (one conditional UPDATE, with `fields`) and record the
    status event, atomically; False (and nothing recorded) when the row was not in `frm`."""
    with transaction.atomic():
        changed = kind.Model.objects.filter(pk=job_id, status__in=list(frm)).update(
            status=to, **{kind.touched: timezone.now()}, **fields)
        if changed:
            status_event(kind, job_id, to, message, level=level, data=data)
    return bool(changed)


def _sent_key(kind: JobKind, job_id: int) -> str:
    return f"nexus:sent:{kind.name}:{job_id}"


def _broker():
    from nexus.control import redis_client

    return redis_client(settings.CELERY_BROKER_URL)


def _send(kind: JobKind, job_id: int) -> None:
    """The kind's run task to its queue, and the broker's mark that it holds it."""
    from nexus.tasks import run_job

    run_job.apply_async((kind.name, job_id), queue=kind.queue_of(job_id), soft_time_limit=kind.time_limit_s,
                        time_limit=kind.time_limit_s + 300)
    _broker().set(_sent_key(kind, job_id), "1", ex=settings.NEXUS_RESEND_AFTER_S)


def enqueue(kind: JobKind, job_id: int) -> None:
    """Send the kind's run task for a row once the transaction commits. The broker's copy is marked
    in the broker's own Redis, so the reaper can tell work the queue holds from work it lost (never
    sent, or gone with a Redis restart) and send only the latter again."""

    def send() -> None:
        try:
            _send(kind, job_id)
        except Exception as exc:  # noqa: BLE001 - kombu and redis raise several types for an unreachable broker
            log.exception("could not enqueue %s %s", kind.name, job_id)
            status = kind.Model.objects.filter(pk=job_id).values_list("status", flat=True).first() or kind.waiting
            event(kind, job_id, QUEUE_ERROR.format(error=type(exc).__name__, status=status), level="warning")

    transaction.on_commit(send)


def _waiting(kind: JobKind):
    """Rows waiting for a run task. Where waiting is also a working status (a deployment starts in
    `starting`), a row is waiting only until a worker holds it."""
    from django.db.models import Q

    return Q(status=kind.waiting, worker="") if kind.waiting in kind.working else Q(status=kind.waiting)


def sent_recently(kind: JobKind, job_ids: list[int]) -> set[int]:
    """Those of `job_ids` whose run task the broker holds (as far as its marks say)."""
    if not job_ids:
        return set()
    marks = _broker().mget([_sent_key(kind, pk) for pk in job_ids])
    return {pk for pk, mark in zip(job_ids, marks) if mark}


def unmark_sent(kind: JobKind, job_id: int) -> None:
    """The run task was taken: a later resend check should not count it as queued."""
    try:
        _broker().delete(_sent_key(kind, job_id))
    except Exception:  # noqa: BLE001 - the mark expires anyway
        log.warning("could not clear the sent mark of %s %s", kind.name, job_id)


def claim(kind: JobKind, job_id: int, *, worker: str, held_by: str = "") -> bool:
    """waiting -> the first working status, held by `worker` (one conditional UPDATE: a duplicate
    delivery finds nothing to claim). `held_by`: a retry after a transient failure takes over the
    row that worker held then (the retry may run on another worker)."""
    from django.db.models import Q

    rows = kind.Model.objects.filter(pk=job_id)
    mine = Q(status__in=kind.working, worker=held_by) if held_by else Q(pk__in=[])
    extra = kind.claim_fields() if kind.claim_fields else {}
    with transaction.atomic():
        claimed = rows.filter(_waiting(kind) | mine).update(status=kind.working[0], worker=worker,
                                                     **{kind.touched: timezone.now()}, **extra)
        if claimed:
            status_event(kind, job_id, kind.working[0], kind.claim_message.format(worker=worker))
            if kind.claimed:
                kind.call("claimed", job_id=job_id, worker=worker)
    unmark_sent(kind, job_id)
    return bool(claimed)


def requeue(kind: JobKind, job_id: int, message: str, *, level: str = "warning", **fields: Any) -> bool:
    """A held row goes back to waiting (its worker is gone) and its run task is sent again."""
    with transaction.atomic():
        if not transition(kind, job_id, to=kind.waiting, frm=kind.working, message=message, level=level, worker="",
                          **fields):
            return False
        enqueue(kind, job_id)
    return True


def resend_waiting(kind: JobKind) -> list[int]:
    """Send again the run task of every waiting row that the broker does not hold."""
    rows = kind.Model.objects.filter(_waiting(kind))
    if kind.resend_filter:
        rows = rows.filter(**kind.resend_filter)
    ids = list(rows.order_by("pk").values_list("pk", flat=True))
    held = sent_recently(kind, ids)
    lost = [pk for pk in ids if pk not in held]
    for pk in lost:
        _send(kind, pk)
    return lost
