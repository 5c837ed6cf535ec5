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
    rows = WorkerHeartbeat.objects.filter(Q(seen_at__lt=since) | Q(stopped_at__isnull=False)).values_list(
        "name", "stopped_at")
    stopped = {name for name, stopped_at in rows if stopped_at is not None}
    silent = {name for name, stopped_at in rows if stopped_at is None}
    # silent in the database is not yet gone: one that still answers the broker is alive (its
    # database connection is what failed) and keeps its work
    return stopped | (silent - workers_answering(silent))


def workers_answering(names: set[str], timeout: float = 1.0) -> set[str]:
    """The workers among `names` that answer `celery inspect ping` within `timeout` seconds."""
    if not names:
        return set()
    from nexus.celery import app

    try:
        replies = app.control.ping(destination=sorted(names), timeout=timeout) or []
    except Exception:  # noqa: BLE001 - the broker is down: nobody can be confirmed alive through it
        log.warning("could not ping workers %s", sorted(names), exc_info=True)
        return set()
    return {name for reply in replies for name in reply} & names


def hosts_alive(*, within_s: int) -> set[str]:
    """Hosts with a worker heard from within `within_s` seconds."""
    from nexus.models import WorkerHeartbeat

    since = timezone.now() - timezone.timedelta(seconds=within_s)
    return set(WorkerHeartbeat.objects.filter(seen_at__gte=since, stopped_at__isnull=True)
               .values_list("host", flat=True))


VISIBILITY_KEY = "nexus:broker:visibility_timeout"


def visibility_timeout() -> int:
    return int(settings.CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"])


def visibility_timeout_check() -> None:
    """Refuse to start a worker whose broker visibility timeout differs from the one the running
    workers use: Redis would redeliver after the shortest of them."""
    from nexus.control import redis_client

    ours = visibility_timeout()
    theirs = redis_client(settings.CELERY_BROKER_URL).get(VISIBILITY_KEY)
    if theirs is not None and int(theirs) != ours:
        raise SystemExit(f"This worker's broker visibility_timeout is {ours} s but the running workers use "
                         f"{int(theirs)} s; set NEXUS_BROKER_VISIBILITY_TIMEOUT_S to the same value in every process "
                         f"(or stop them all first).")
    _visibility_announce()


def _visibility_announce() -> None:
    """Say which visibility timeout the live workers use (expires when none is left to renew it)."""
    from nexus.control import redis_client

    ttl = max(60, 3 * int(settings.NEXUS_WORKER_LOST_AFTER_S))
    redis_client(settings.CELERY_BROKER_URL).set(VISIBILITY_KEY, visibility_timeout(), ex=ttl)


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
                _visibility_announce()
            except Exception:  # noqa: BLE001 - a database blip costs one beat; the next one retries
                log.warning("worker heartbeat failed", exc_info=True)
            self.stopping.wait(settings.NEXUS_WORKER_HEARTBEAT_S)

    def stop(self) -> None:
        self.stopping.set()
        try:
            heartbeat(name=self.worker, queues=self.queues, stopped=True)
        except Exception:  # noqa: BLE001 - then it is lost by silence instead
            log.warning("could not record the worker's stop", exc_info=True)
