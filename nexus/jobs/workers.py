"""Worker heartbeats: every worker writes its row every few seconds from a thread of its main
process, so the reaper knows which workers are alive without asking them. A worker that stops
cleanly says so; one that died just falls silent."""
from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

log = logging.getLogger(__name__)


def host_name() -> str:
    """This machine's name as workers record it (NEXUS_HOST_NAME, or the host name)."""
    return settings.NEXUS_HOST_NAME or socket.gethostname()


def host_queue(host: str) -> str:
    """The queue only the workers on `host` consume: work bound to that machine (its servers)."""
    return f"host.{host}"


def heartbeat(*, name: str, queues: list[str], stopped: bool = False) -> None:
    from nexus.models import WorkerHeartbeat

    now = timezone.now()
    WorkerHeartbeat.objects.update_or_create(name=name, defaults={
        "host": host_name(), "queues": ",".join(sorted(queues)), "pid": os.getpid(), "seen_at": now,
        "stopped_at": now if stopped else None})


def workers_lost() -> set[str]:
    """Names of workers that stopped, or that have not been heard from within
    NEXUS_WORKER_LOST_AFTER_S. (A worker never heard from is not known to be lost.)"""
    from django.db.models import Q

    from nexus.models import WorkerHeartbeat

    since = timezone.now() - timezone.timedelta(seconds=settings.NEXUS_WORKER_LOST_AFTER_S)
    return set(WorkerHeartbeat.objects.filter(Q(seen_at__lt=since) | Q(stopped_at__isnull=False))
               .values_list("name", flat=True))


def hosts_alive(*, within_s: int) -> set[str]:
    """Hosts with a worker heard from within `within_s` seconds."""
    from nexus.models import WorkerHeartbeat

    since = timezone.now() - timezone.timedelta(seconds=within_s)
    return set(WorkerHeartbeat.objects.filter(seen_at__gte=since, stopped_at__isnull=True)
               .values_list("host", flat=True))


class HeartbeatThread(threading.Thread):
    def __init__(self, *, name: str, queues: list[str]):
        super().__init__(name="nexus-heartbeat", daemon=True)
        self.worker, self.queues = name, queues
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                close_old_connections()
                heartbeat(name=self.worker, queues=self.queues)
            except Exception:  # noqa: BLE001 - a database blip costs one beat; the next one retries
                log.warning("worker heartbeat failed", exc_info=True)
            self.stopping.wait(settings.NEXUS_WORKER_HEARTBEAT_S)

    def stop(self) -> None:
        self.stopping.set()
        try:
            heartbeat(name=self.worker, queues=self.queues, stopped=True)
        except Exception:  # noqa: BLE001 - then it is lost by silence instead
            log.warning("could not record the worker's stop", exc_info=True)
