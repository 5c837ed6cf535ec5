"""Per-job control channels in Redis: the web side sends commands (stop, pause, resume,
checkpoint); the worker running the job reads them after every step without touching the
database. Redis only carries the signal: every request is also recorded on the job's row and
in its events, and the worker re-reads the row every few seconds, so a lost message (or a
Redis outage) delays a command, never drops it."""
from __future__ import annotations

import functools
import logging

import redis
from django.conf import settings

log = logging.getLogger(__name__)

COMMANDS = ("stop", "pause", "resume", "checkpoint")
TTL_SECONDS = 7 * 24 * 3600  # a command for a job nobody runs any more does not linger forever


def control_key(kind: str, job_id: int) -> str:
    return f"nexus:control:{kind}:{job_id}"


@functools.lru_cache(maxsize=4)
def redis_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


def control_send(*, kind: str, job_id: int, command: str) -> bool:
    """Queue a command for the job's worker; False when Redis cannot be reached (the database
    flag that the caller also wrote still gets it there)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown control command {command!r}")
    key = control_key(kind, job_id)
    try:
        pipe = redis_client(settings.NEXUS_CONTROL_REDIS_URL).pipeline()
        pipe.rpush(key, command)
        pipe.expire(key, TTL_SECONDS)
        pipe.execute()
    except redis.RedisError:
        log.warning("control channel unreachable; %s for %s job %s goes through the database", command, kind, job_id)
        return False
    return True


def control_receive(*, kind: str, job_id: int) -> list[str] | None:
    """Take every command queued for the job, oldest first; None when Redis cannot be reached."""
    key = control_key(kind, job_id)
    try:
        pipe = redis_client(settings.NEXUS_CONTROL_REDIS_URL).pipeline()  # MULTI/EXEC: read and clear at once
        pipe.lrange(key, 0, -1)
        pipe.delete(key)
        raw, _ = pipe.execute()
    except redis.RedisError:
        return None
    return [c.decode() for c in raw]


def control_clear(*, kind: str, job_id: int) -> None:
    """Forget stale commands (a job starting or restarting acts on its row, not on old signals)."""
    try:
        redis_client(settings.NEXUS_CONTROL_REDIS_URL).delete(control_key(kind, job_id))
    except redis.RedisError:
        pass
