"""Evaluation with a real Celery worker: a comparison session of base + adapter (llama.cpp in the
worker) against a running deployment (a real llama.cpp server), its progress and each finished
comparison pushed over the websocket as they happen; then an LLM judge over it, on the worker,
through a local OpenAI-protocol server."""
from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from tests.e2e.test_finetune_e2e import wait_for
from tests.evaluation_app.conftest import eval_adapter, random_adapter_gguf  # noqa: F401  (fixtures)
from tests.evaluation_app.test_judge import KEY, prefers_finetuned
from tests.fakes.teachers import FakeTeacher
from tests.nexus.test_websocket import _app, _headers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
URL = "/api/v1/finetune/eval/compare"


def test_a_session_runs_on_a_worker_and_pushes_each_comparison_live_then_a_judge_runs(
        celery_worker_process, base_model, api, user, eval_adapter, settings):
    from tests.deployments_app.test_deployments import deploy, stop, wait_running

    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com,127.0.0.1"
    d = wait_running(api, deploy(api, name="served-base")["id"])
    try:
        r = api.post(URL, {"name": "live", "comparison_type": "batch",
                           "models": [{"type": "deployment", "deployment_id": d["id"]},
                                      {"type": "adapter", "adapter_id": eval_adapter.pk}],
                           "test_prompts": [f"Give me fact number {i} about the sea." for i in range(5)],
                           "sampling_params": {"max_tokens": 12, "temperature": 0.7, "seed": 7}}, format="json")
        assert r.status_code == 201, r.content
        session = r.json()
        assert [m["type"] for m in session["models"]] == ["deployment", "adapter"]
        headers = _headers(user)

        async def follow() -> list[dict]:
            comm = WebsocketCommunicator(_app(), f"/ws/finetune/comparison/{session['id']}/", headers=headers)
            connected, _ = await comm.connect()
            assert connected
            run = await sync_to_async(api.post)(f"{URL}/{session['id']}/run")
            assert run.status_code == 202
            seen = []
            while True:
                e = await comm.receive_json_from(timeout=240)
                seen.append(e)
                if e["type"] == "status" and e["data"]["status"] in ("completed", "failed", "cancelled"):
                    break
            await comm.disconnect()
            return seen

        events = async_to_sync(follow)()
        assert events[-1]["data"]["status"] == "completed", events[-1]["message"]
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        assert statuses == ["queued", "running", "completed"]
        pushed = [e["data"] for e in events if e["type"] == "metric" and "comparison_id" in e["data"]]
        assert [p["done"] for p in pushed] == [1, 2, 3, 4, 5] and pushed[-1]["progress"] == 1.0
        detail = api.get(f"{URL}/{session['id']}").json()
        assert sorted(p["comparison_id"] for p in pushed) == sorted(c["id"] for c in detail["comparisons"])
        for c in detail["comparisons"]:
            assert c["base_response"]["model_name"] == "deployment served-base"
            assert c["base_response"]["tokens_generated"] > 0 and c["finetuned_response"]["tokens_generated"] > 0
        with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=prefers_finetuned) as fake:
            run = api.post("/api/v1/finetune/eval/judge", {
                "session_id": session["id"], "judge_config": {"provider": "openai", "model": "gpt-4o", "api_key": KEY,
                                                              "base_url": fake.openai_base_url}}, format="json").json()
            judged = wait_for(lambda: api.get(f"/api/v1/finetune/eval/judge/{run['id']}").json(),
                              lambda j: j["status"] not in ("queued", "running"), 120, "the judge run")
            assert fake.count("/v1/chat/completions", status=200) == 10
        assert judged["status"] == "completed", judged["error"]
        assert judged["summary"]["judged"] == 5 and judged["summary"]["position_consistency"]["consistent"] in range(6)
    finally:
        stop(api, d["id"])


def test_cancel_stops_a_running_session_within_seconds_and_a_new_run_finishes_it(celery_worker_process, api,
                                                                                 eval_adapter):
    r = api.post(URL, {"name": "long", "adapter_id": eval_adapter.pk, "run": True,
                       "test_prompts": [f"Write a long story about planet {i}." for i in range(12)],
                       "sampling_params": {"max_tokens": 32}}, format="json")
    assert r.status_code == 201, r.content
    sid = r.json()["id"]
    wait_for(lambda: api.get(f"{URL}/{sid}", {"status": "done"}).json(), lambda s: s["count"] >= 1, 180,
             "the first comparison")
    asked = time.monotonic()
    assert api.post(f"{URL}/{sid}/cancel").status_code == 202
    done = wait_for(lambda: api.get(f"{URL}/{sid}").json(), lambda s: s["status"] != "running", 60, "the stop")
    assert done["status"] == "cancelled" and time.monotonic() - asked < 15
    pending = api.get(f"{URL}/{sid}", {"status": "pending"}).json()["count"]
    assert 0 < pending < 12
    assert api.post(f"{URL}/{sid}/run").status_code == 202
    finished = wait_for(lambda: api.get(f"{URL}/{sid}").json(), lambda s: s["status"] not in ("queued", "running"),
                        600, "the second run")
    assert finished["status"] == "completed" and api.get(f"{URL}/{sid}", {"status": "done"}).json()["count"] == 12
