"""Distillation with a real Celery worker against a local OpenAI-protocol server: a worker killed
with SIGKILL mid-run resumes without asking the teacher again for any answer it had stored, a
cancel stops a running job within seconds, and the key is in no log line of the worker."""
from __future__ import annotations

import time

import pytest

from datasets_app.distillation.models import DistillationItem
from tests.conftest import LOG_DIR
from tests.datasets_app.distillation.conftest import KEY, _teachers_on_loopback, openai_teacher, teacher  # noqa: F401  (fixtures)
from tests.e2e.test_finetune_e2e import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPTS = [f"Question {i}: explain topic number {i} in two sentences." for i in range(16)]


def get(api, job_id: int) -> dict:
    return api.get(f"/api/v1/finetune/distillation/jobs/{job_id}").json()


def start(api, teacher, **extra) -> dict:
    body = {"name": "e2e-distill", "teacher_config": openai_teacher(teacher), "prompts_config": {"prompts": PROMPTS},
            "batch_size": 2, "rate_limit": 600, **extra}
    r = api.post("/api/v1/finetune/distillation/jobs", body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_a_worker_killed_mid_run_resumes_without_paying_twice(celery_worker_process, api, teacher):
    teacher.latency_s = 0.4
    job = start(api, teacher)
    wait_for(lambda: get(api, job["id"]), lambda j: j["generated"] >= 5 or j["status"] not in ("queued", "running"),
             120, "five answers")
    celery_worker_process.kill9()
    stored = set(DistillationItem.objects.filter(job_id=job["id"]).exclude(calls={}).values_list("prompt", flat=True))
    assert len(stored) >= 5 and get(api, job["id"])["status"] == "running"
    answered_before = teacher.count(status=200)
    celery_worker_process.start()  # same name: at start it reaps its orphaned job, which is queued again
    done = wait_for(lambda: get(api, job["id"]), lambda j: j["status"] not in ("queued", "running"), 180,
                    "the job to finish")
    assert done["status"] == "completed", done["error"]
    assert done["accepted"] == len(PROMPTS)
    for prompt in stored:  # every answer stored before the kill was used, not bought again
        assert len(teacher.calls_for(prompt, status=200)) == 1, prompt
    # only the requests in flight at the kill (at most batch_size) can have been answered twice
    assert teacher.count(status=200) <= len(PROMPTS) + 2
    assert teacher.count(status=200) - answered_before <= len(PROMPTS) - len(stored) + 2
    messages = [e["message"] for e in api.get(f"/api/v1/finetune/distillation/jobs/{job['id']}/events").json()["results"]]
    assert any(m.startswith("Resuming:") and "not asked again" in m for m in messages), messages
    for log in LOG_DIR.glob("celery-*.log"):
        assert KEY not in log.read_text(errors="replace"), log


def test_cancel_stops_a_running_job_within_seconds(celery_worker_process, api, teacher):
    teacher.latency_s = 1.0
    job = start(api, teacher)
    wait_for(lambda: get(api, job["id"]), lambda j: j["generated"] >= 2 or j["status"] not in ("queued", "running"),
             120, "two answers")
    asked = time.monotonic()
    r = api.delete(f"/api/v1/finetune/distillation/jobs/{job['id']}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    done = wait_for(lambda: get(api, job["id"]), lambda j: j["status"] != "running", 30, "the cancel")
    assert done["status"] == "cancelled"
    assert time.monotonic() - asked < 6
    requests_at_cancel = teacher.count()
    time.sleep(2)
    assert teacher.count() == requests_at_cancel  # nothing more is sent after a cancel
    assert done["accepted"] >= 2  # what was paid for is kept for review


def test_self_distillation_from_a_model_deployed_in_nexus(celery_worker_process, base_model, api):
    """Section 4.5: the teacher is a deployment (a real llama.cpp server of the demo model), with no
    key or address given: Nexus knows both."""
    from tests.deployments_app.test_deployments import deploy, stop, wait_running

    d = wait_running(api, deploy(api, name="teacher")["id"])
    try:
        body = {"name": "self-distill", "teacher_config": {"provider": "deployed", "deployment_id": d["id"],
                                                           "max_tokens": 24, "temperature": 0},
                "prompts_config": {"prompts": ["Say hello to a new user.", "Name a colour of the sky.",
                                               "Give one tip for staying focused."]},
                "quality": {"min_words": 1, "check_language": False}, "batch_size": 2}
        r = api.post("/api/v1/finetune/distillation/jobs", body, format="json")
        assert r.status_code == 201, r.content
        assert r.json()["teachers"][0]["provider"] == "deployed" and r.json()["teachers"][0]["key_last4"] == ""
        done = wait_for(lambda: get(api, r.json()["id"]), lambda j: j["status"] not in ("queued", "running"), 300,
                        "the job to finish")
        assert done["status"] == "completed", done["error"]
        assert done["generated"] == 3 and done["tokens_out"] > 0
        items = api.get(f"/api/v1/finetune/distillation/jobs/{done['id']}/preview").json()["results"]
        answered = [i for i in items if i["response"].strip()]
        assert len(answered) == 3, items
        assert done["cost_usd"] == 0  # a deployed model has no price: it costs no API money
    finally:
        stop(api, d["id"])
