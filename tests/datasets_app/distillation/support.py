"""Helpers of the distillation API tests (test_apis, test_failures, test_access, test_secrets)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from datasets_app.distillation.models import DistillationJob

API = "/api/v1/finetune/distillation"


def job_body(teacher_config: dict, prompts: list[str] | None = None, **extra: Any) -> dict:
    return {"name": "distill", "teacher_config": teacher_config,
            "prompts_config": {"prompts": prompts or ["What is 15% of 80?", "Name three primary colours."]},
            "batch_size": 3, "rate_limit": 600, **extra}


def create_job(api, body: dict) -> dict:
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def run_task(job_id: int, worker: str = "w1@host", held_by: str = "") -> BaseException | None:
    """What the job kit's run task does with a failure (nexus/tasks.py run_job): a transient one
    leaves the row held for the kit's retry and is returned; any other fails the job and is returned."""
    from nexus.jobs import claim, is_transient, kind_get
    from nexus.redact import public_error

    kind = kind_get("distillation")
    assert claim(kind, job_id, worker=worker, held_by=held_by)
    try:
        kind.call("run", job_id)
    except Exception as exc:  # noqa: BLE001 - what the task does with it is the point
        if not is_transient(exc):
            kind.call("fail", job_id=job_id, error=public_error(exc, what=kind.label))
        return exc
    return None


def job(job_id: int) -> DistillationJob:
    return DistillationJob.objects.get(pk=job_id)


def items(api, job_id: int, **params: Any) -> list[dict]:
    r = api.get(f"{API}/jobs/{job_id}/preview", {"limit": 500, **params})
    assert r.status_code == 200, r.content
    return r.json()["results"]


def error_of(response) -> dict:
    """The API's one error shape: {"error": {"code", "message", "details"}}."""
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class JobThread(threading.Thread):
    """run_task on a thread with its own database connection (tests marked transaction=True)."""

    def __init__(self, job_id: int, **kwargs: Any):
        super().__init__(daemon=True)
        self.job_id, self.kwargs = job_id, kwargs
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        from django.db import connection

        try:
            self.error = run_task(self.job_id, **self.kwargs)
        finally:
            self.ended_at = time.monotonic()
            connection.close()
