"""The one reaper: for every kind, rows held by a worker that is gone are resumed, requeued or
failed (the kind decides), waiting rows the broker lost are sent again, and work bound to a host
is checked on that host. Run by each worker as it starts, by Celery beat every
NEXUS_REAP_EVERY_S seconds and by `manage.py nexus_reap_jobs`; every step is a conditional
update, so two reapers at once do no harm."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from nexus.jobs import resend_waiting
from nexus.jobs.kinds import JobKind, kinds
from nexus.jobs.workers import host_queue, hosts_alive, workers_lost

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    orphaned: dict[str, list[int]] = field(default_factory=dict)  # kind -> rows whose worker was gone
    resent: dict[str, list[int]] = field(default_factory=dict)  # kind -> waiting rows sent again
    hosts_checked: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{k}: orphaned {v}" for k, v in self.orphaned.items() if v]
        parts += [f"{k}: sent again {v}" for k, v in self.resent.items() if v]
        if self.hosts_checked:
            parts.append(f"hosts asked to check their servers: {', '.join(self.hosts_checked)}")
        return "; ".join(parts) or "nothing to do"


def _held_by_lost_workers(kind: JobKind, *, lost: set[str], stale_after_s: int | None):
    """Rows of `kind` that a worker holds but that no live worker runs: those of the `lost` workers
    and (with a stale limit) those left untouched that long."""
    rows = kind.Model.objects.filter(status__in=kind.working).exclude(worker="")
    gone = Q(worker__in=lost)
    if stale_after_s:
        gone |= Q(**{f"{kind.touched}__lt": timezone.now() - timezone.timedelta(seconds=stale_after_s)})
    return rows.filter(gone)


def reap(*, worker: str | None = None, stale_after_s: int | None = None, resend: bool = True,
         check_hosts: bool = True) -> Reaped:
    """`worker`: only the rows held under that name (a worker restarting under it); otherwise those
    of workers whose heartbeat stopped, and stale ones."""
    result = Reaped()
    lost = {worker} if worker else workers_lost()
    for kind in kinds():
        orphaned = []
        stale = None if worker else stale_after_s if stale_after_s is not None else kind.stale_after_s
        for row in _held_by_lost_workers(kind, lost=lost, stale_after_s=stale):
            try:
                kind.call("orphaned", row)
                orphaned.append(row.pk)
            except Exception:  # noqa: BLE001 - one row's trouble must not stop the rest
                log.exception("could not reap %s %s", kind.name, row.pk)
        result.orphaned[kind.name] = orphaned
        if resend:
            try:
                result.resent[kind.name] = resend_waiting(kind)
            except Exception:  # noqa: BLE001 - the broker is down: the next round sends them
                log.exception("could not send waiting %s work again", kind.name)
    if check_hosts:
        result.hosts_checked = _check_hosts()
    if any(result.orphaned.values()) or any(result.resent.values()):
        log.warning("reaper: %s", result.summary())
    return result


def _check_hosts() -> list[str]:
    """Ask each host with live host-bound work (llama.cpp servers) to check it there. Work on a host
    whose workers have all been silent for NEXUS_HOST_LOST_AFTER_S is given up by its kind; a host
    never heard from is left alone (nothing is known about it)."""
    from nexus.models import WorkerHeartbeat

    alive = hosts_alive(within_s=settings.NEXUS_HOST_LOST_AFTER_S)
    known = set(WorkerHeartbeat.objects.values_list("host", flat=True))
    asked = []
    for kind in kinds():
        if not kind.host_check:
            continue
        for host in sorted(kind.call("live_hosts")):
            if host in alive:
                check_host_soon(kind, host)
                asked.append(host)
            elif host in known:
                kind.call("host_lost", host=host)
            else:
                log.warning("%s work on host %r, which no worker has ever reported from", kind.name, host)
    return asked


def check_host_soon(kind: JobKind, host: str) -> None:
    """Ask `host`'s own worker to check the kind's live rows there (a task on its queue, dropped
    if not taken before the next round would ask again)."""
    from nexus.tasks import check_host

    check_host.apply_async((kind.name, host), queue=host_queue(host), expires=settings.NEXUS_REAP_EVERY_S)
