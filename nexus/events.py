"""Job events: written to Postgres in order, pushed to the job's Channels group after commit."""
from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.db.models import Max

from nexus.jobs.kinds import kind_get
from nexus.models import JobEvent
from nexus.redact import public_data, public_text


def job_group(kind: str, job_id: int) -> str:
    return f"job-{kind}-{job_id}"


def _push(kind: str, job_id: int, payload: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(job_group(kind, job_id), {"type": "job.event", "event": payload})
    except Exception:  # noqa: BLE001 - a missed push is recovered from the database on reconnect
        pass


@transaction.atomic
def job_event_record(
    *,
    kind: str,
    job_id: int,
    message: str = "",
    type: str = JobEvent.Type.LOG,
    level: str = JobEvent.Level.INFO,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    # Serialize writers of one job's stream so seq is dense and commit order equals seq order.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [kind_get(kind).lock, job_id])
    event = JobEvent.objects.create(
        job_kind=kind, job_id=job_id, seq=job_events_last_seq(kind=kind, job_id=job_id) + 1, type=type, level=level,
        message=public_text(message), data=public_data(data or {}),
    )
    payload = event.as_message()
    transaction.on_commit(lambda: _push(kind, job_id, payload))
    return event


def job_events_last_seq(*, kind: str, job_id: int) -> int:
    """The seq of a job's newest event (0 before the first)."""
    return JobEvent.objects.filter(job_kind=kind, job_id=job_id).aggregate(m=Max("seq"))["m"] or 0


def job_events_after(*, kind: str, job_id: int, after: int = 0, limit: int | None = None) -> list[JobEvent]:
    qs = JobEvent.objects.filter(job_kind=kind, job_id=job_id, seq__gt=after).order_by("seq")
    return list(qs[:limit] if limit else qs)
