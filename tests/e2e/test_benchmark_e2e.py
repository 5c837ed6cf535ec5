"""Benchmarks on a real Celery worker that consumes only the GPU queue (the job is routed there),
its progress and each finished benchmark pushed over the websocket, and a cancel stops it between
two batches of a benchmark, not at its end."""
from __future__ import annotations

import os
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from tests.e2e.test_finetune_e2e import wait_for
from tests.evaluation_app.conftest import random_adapter_gguf  # noqa: F401  (fixture)
from tests.evaluation_app.test_benchmarks import peft_adapter  # noqa: F401  (fixture)
from tests.nexus.test_websocket import _app, _headers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
URL = "/api/v1/finetune/eval/benchmark"


@pytest.fixture
def gpu_worker(django_db_setup, django_db_blocker):
    from tests.conftest import WorkerProcess

    worker = WorkerProcess(f"gpu-{os.getpid()}@%h", queues="gpu")
    worker.start()
    yield worker
    with django_db_blocker.unblock():
        worker.stop()


def test_a_benchmark_job_runs_on_the_gpu_queue_and_pushes_its_progress(gpu_worker, api, user, peft_adapter):
    headers = _headers(user)

    async def follow() -> tuple[dict, list[dict]]:
        r = await sync_to_async(api.post)(URL, {"adapter_id": peft_adapter.pk, "benchmarks": [
            {"benchmark_name": "mmlu", "num_samples": 4, "num_few_shot": 0},
            {"benchmark_name": "gsm8k", "num_samples": 1, "num_few_shot": 0, "max_tokens": 8}]}, format="json")
        assert r.status_code == 202, r.content
        job = r.json()
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/benchmark/{job['id']}/", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        seen = []
        while True:
            e = await comm.receive_json_from(timeout=400)
            seen.append(e)
            if e["type"] == "status" and e["data"]["status"] in ("completed", "failed", "cancelled"):
                break
        await comm.disconnect()
        return job, seen

    job, events = async_to_sync(follow)()
    assert events[-1]["data"]["status"] == "completed", events[-1]["message"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "completed"]
    progress = [e["data"] for e in events if e["type"] == "metric" and "progress" in e["data"]]
    assert [(p["benchmark"], p["side"]) for p in progress if "benchmark" in p][:4] == [
        ("mmlu", "base"), ("gsm8k", "base"), ("mmlu", "finetuned"), ("gsm8k", "finetuned")]
    finished = [e for e in events if e["data"].get("benchmark") in ("mmlu", "gsm8k") and "result" in e["data"]]
    assert [e["data"]["benchmark"] for e in finished] == ["mmlu", "gsm8k"]
    assert any("self-check passed" in e["message"] for e in events)
    detail = api.get(f"{URL}/{job['id']}").json()
    # the suite's session worker may consume `gpu` too: either may have taken it
    assert detail["worker"] and set(detail["results"]) == {"mmlu", "gsm8k"}


def test_cancelling_a_running_benchmark_stops_it_within_a_batch(gpu_worker, api, base_model):
    r = api.post(URL, {"base_model": base_model.name, "benchmarks": [
        {"benchmark_name": "mmlu", "num_samples": 400, "num_few_shot": 5, "batch_size": 2}]}, format="json")
    job_id = r.json()["id"]
    wait_for(lambda: api.get(f"{URL}/{job_id}?items=false").json(),
             lambda j: j["status"] == "running" and j["current"] == "MMLU", 300, "the benchmark to start")
    time.sleep(8)  # into lm-eval's batches (the model is loaded and self-checked first)
    asked = time.monotonic()
    assert api.delete(f"{URL}/{job_id}").status_code == 202
    done = wait_for(lambda: api.get(f"{URL}/{job_id}?items=false").json(), lambda j: j["status"] != "running", 120,
                    "the cancel")
    assert done["status"] == "cancelled" and done["results"] == {}
    assert time.monotonic() - asked < 60  # a full run of these 400 questions takes many minutes here
