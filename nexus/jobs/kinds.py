"""A kind of long-running work, declared once: its row, its states, where it runs, how it is run,
and what happens to it when the worker holding it is gone. Everything else (claiming, events,
enqueueing, retries, reaping, the events API and the websocket) is the kit's, the same for all."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

from django.apps import apps
from django.utils.module_loading import import_string

_KINDS: dict[str, "JobKind"] = {}


@dataclass(eq=False)
class JobKind:
    name: str  # JobEvent.Kind value: the events' job_kind, the websocket path segment, the task argument
    label: str  # starts the sentence of a failure: "Training failed: ..."
    model: str  # "app_label.Model" of its rows; they have `status`, `worker` and the `touched` column
    queue: str  # the Celery queue its run task goes to ("cpu" or "gpu")
    waiting: str  # the status a run task claims the row from
    working: tuple[str, ...]  # statuses in which a worker holds the row (the claim sets the first)
    run: str  # dotted path: run(job_id) does a claimed row to the end; what it raises, the kit records
    fail: str  # dotted path: fail(job_id=..., error=...) records a failure the user reads
    orphaned: str  # dotted path: orphaned(row) resumes, requeues or fails a row whose worker is gone
    loader: str  # dotted path: loader(user=..., pk=...) -> row, 404 for outsiders (events, websocket)
    lock: int  # advisory-lock namespace of its event stream (unique per kind)
    time_limit_s: int = 3600
    stale_after_s: int | None = None  # a held row untouched this long is orphaned even if its worker lives
    touched: str = "updated_at"  # the column the running work keeps fresh
    claim_message: str = "Started on {worker}"  # the status event of a claim
    claimed: str = ""  # dotted path: claimed(job_id=..., worker=...) more work when a row is claimed
    claim_fields: Callable[[], dict[str, Any]] | None = None  # more columns the claim sets
    resend_filter: dict[str, Any] | None = None  # waiting rows that are not to be sent again
    queue_for: str = ""  # dotted path: queue_for(job_id) -> the queue of one row, where rows differ (else `queue`)
    # host-bound work (servers that run on the machine that started them), all dotted paths:
    live_hosts: str = ""  # live_hosts() -> the hosts it has live rows on
    host_check: str = ""  # host_check(host=...) checks that host's live rows; runs on that host
    host_lost: str = ""  # host_lost(host=...) gives up the rows of a host no worker reports from

    @cached_property
    def Model(self):  # noqa: N802 - a model class
        return apps.get_model(self.model)

    def call(self, attr: str, *args: Any, **kwargs: Any) -> Any:
        return import_string(getattr(self, attr))(*args, **kwargs)

    def queue_of(self, job_id: int) -> str:
        """The queue a row's run task goes to (every send: the first, a resume, the reaper's)."""
        return self.call("queue_for", job_id) if self.queue_for else self.queue


def register(kind: JobKind) -> JobKind:
    """Declare a kind (once, at import of the app's `jobs` module)."""
    if kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"job kind {kind.name!r} is declared twice")
    if any(k.lock == kind.lock for k in _KINDS.values() if k is not kind):
        raise ValueError(f"job kind {kind.name!r}: lock {kind.lock} is taken")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[JobKind]:
    _load()
    return list(_KINDS.values())


def kind_get(name: str) -> JobKind:
    _load()
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"unknown job kind {name!r} (known: {', '.join(_KINDS)})") from None


_discovered = False


def _load() -> None:
    """Import every installed app's `jobs` module, where kinds are declared (once)."""
    global _discovered
    if not _discovered:
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules("jobs")
        _discovered = True
