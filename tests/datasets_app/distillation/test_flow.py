"""A distillation job through the API, run in this process against a local OpenAI/Anthropic server."""
from __future__ import annotations

import pytest

from datasets_app.distillation.models import DistillationJob
from tests.datasets_app.distillation.conftest import KEY, anthropic_teacher, openai_teacher, run_job

PROMPTS = ["What is 15% of 80?", "Name three primary colours.", "Explain what a hash map is.",
           "Write a haiku about the sea.", "How do vaccines train the immune system?"]


@pytest.mark.django_db
@pytest.mark.parametrize("make_teacher", [openai_teacher, anthropic_teacher], ids=["openai", "anthropic"])
def test_prompts_become_answers_that_approve_into_a_dataset(api, teacher, make_teacher):
    body = {"name": "coding-distill", "teacher_config": make_teacher(teacher),
            "prompts_config": {"prompts": PROMPTS, "include_reasoning": False}, "output_format": "sharegpt",
            "batch_size": 3, "rate_limit": 600}
    r = api.post("/api/v1/finetune/distillation/jobs", body, format="json")
    assert r.status_code == 201, r.content
    assert KEY not in r.content.decode()
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued" and r.json()["num_items"] == 5
    run_job(job_id)
    job = api.get(f"/api/v1/finetune/distillation/jobs/{job_id}").json()
    assert job["status"] == "completed", job
    assert (job["accepted"], job["rejected"], job["generated"]) == (5, 0, 5)
    assert job["tokens_in"] > 0 and job["tokens_out"] > 0
    assert teacher.count(status=200) == 5 and not teacher.repeated_prompts()
    events = api.get(f"/api/v1/finetune/distillation/jobs/{job_id}/events").json()["results"]
    last = [e for e in events if e["type"] == "status"][-1]
    assert last["data"]["status"] == "completed" and last["data"]["accepted"] == 5
    preview = api.get(f"/api/v1/finetune/distillation/jobs/{job_id}/preview").json()
    assert preview["count"] == 5
    assert {i["prompt"] for i in preview["results"]} == set(PROMPTS)
    assert all(i["status"] == "accepted" and i["response"].startswith("Here is what") for i in preview["results"])
    r = api.post(f"/api/v1/finetune/distillation/jobs/{job_id}/approve", {"name": "distilled"}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["origin"]["job_id"] == job_id
    assert DistillationJob.objects.get(pk=job_id).dataset_id == r.json()["dataset_id"]
    dataset = api.get(f"/api/v1/finetune/datasets/{r.json()['dataset_id']}").json()
    assert dataset["origin"]["kind"] == "distillation" and dataset["origin"]["records"] == 5
    assert dataset["status"] == "uploading" and dataset["format"] == "sharegpt"  # the normal pipeline takes it


def _writes_prompts(messages, model):
    """The fake teacher: numbered requests when asked to write prompts, else an answer."""
    from tests.datasets_app.distillation.conftest import varied_answer

    text = messages[-1]["content"]
    if "numbered" in text and "new, diverse requests" in text:
        import re

        count = int(re.search(r"Write (\d+) new", text).group(1))
        return "Here are the requests:\n" + "\n".join(
            f"{i + 1}. Write a function number {i} in {model} style that reverses list {i}." for i in range(count))
    return varied_answer(messages, model)


@pytest.mark.django_db
def test_a_template_with_fewer_combinations_than_wanted_has_the_teacher_write_more_prompts(api, teacher):
    teacher.responder = _writes_prompts
    body = {"name": "from-template", "teacher_config": openai_teacher(teacher), "rate_limit": 6000, "batch_size": 4,
            "prompts_config": {"template_id": "coding-assistant", "num_examples": 12,
                               "variables": {"language": ["Python"], "task": ["write a function that"],
                                             "topic": ["parses dates", "merges two sorted lists"]}}}
    r = api.post("/api/v1/finetune/distillation/jobs", body, format="json")
    assert r.status_code == 201, r.content
    created = r.json()
    assert created["num_prompts"] < 12 and created["prompts_to_generate"] == 12 - created["num_prompts"]
    run_job(created["id"])
    job = api.get(f"/api/v1/finetune/distillation/jobs/{created['id']}").json()
    assert job["status"] == "completed", job["error"]
    assert job["num_prompts"] == 12 and job["prompts_to_generate"] == 0 and job["accepted"] == 12
    written = [i for i in api.get(f"/api/v1/finetune/distillation/jobs/{created['id']}/preview?limit=50").json()["results"]
               if i["prompt"].startswith("Write a function number")]
    assert len(written) == 12 - created["num_prompts"]
    events = [e["message"] for e in api.get(f"/api/v1/finetune/distillation/jobs/{created['id']}/events").json()["results"]]
    assert any(m.startswith("The teacher wrote") for m in events)
    # the prompt-writing calls are paid for too: the job's tokens are the answers' plus theirs
    from datasets_app.models import DistillationItem

    rows = DistillationItem.objects.filter(job_id=created["id"])
    writing = [r.calls["write_prompts"]["tokens_in"] for r in rows if "write_prompts" in r.calls]
    assert writing and all(writing)
    assert job["tokens_in"] == sum(r.tokens_in for r in rows) + sum(writing)


@pytest.mark.django_db
def test_an_inline_template_needs_no_saved_template_and_hand_rejections_count_as_manual(api, teacher):
    body = {"name": "inline", "teacher_config": openai_teacher(teacher), "rate_limit": 6000,
            "prompts_config": {"template": {"prompt": "Explain {topic} to a {reader}.",
                                            "variables": {"topic": ["recursion", "caching"], "reader": ["child", "CTO"]},
                                            "system_prompt": "Be brief."}, "num_examples": 4}}
    r = api.post("/api/v1/finetune/distillation/jobs", body, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["num_prompts"] == 4 and r.json()["prompts_to_generate"] == 0
    run_job(r.json()["id"])
    base = f"/api/v1/finetune/distillation/jobs/{r.json()['id']}"
    results = api.get(f"{base}/preview").json()["results"]
    assert {i["prompt"] for i in results} == {f"Explain {t} to a {w}." for t in ("recursion", "caching")
                                              for w in ("child", "CTO")}
    assert api.post(f"{base}/items/{results[0]['id']}/review", {"decision": "reject"}, format="json").status_code == 200
    counts = api.get(base).json()["counts"]
    assert counts["rejected_by_reason"] == {"manual": 1}
    bad = {**body, "prompts_config": {"template": {"prompt": "Explain {topic.upper}."}}}
    r = api.post("/api/v1/finetune/distillation/jobs", bad, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("prompts_config.template.prompt:")


@pytest.mark.django_db
def test_a_run_that_outlives_its_time_slice_is_resumed_not_failed(api, teacher):
    """Celery's soft time limit arrives as a signal in the worker's main thread (SIGUSR1 raising
    SoftTimeLimitExceeded); the run turns it into a transient error that the kit retries."""
    import os
    import signal
    import threading

    from celery.exceptions import SoftTimeLimitExceeded

    from nexus.jobs import TransientError

    teacher.latency_s = 0.2
    prompts = [f"Slice question {i}: say something about {i}." for i in range(16)]
    r = api.post("/api/v1/finetune/distillation/jobs", {"name": "slices", "teacher_config": openai_teacher(teacher),
                                                        "prompts_config": {"prompts": prompts}, "batch_size": 2,
                                                        "rate_limit": 6000}, format="json")
    job_id = r.json()["id"]

    def soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, soft_limit)
    timer = threading.Timer(0.8, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(TransientError, match="time slice"):
            run_job(job_id)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert DistillationJob.objects.get(pk=job_id).status == "running"  # held, for the kit's retry to take over
    run_job(job_id, worker="retry@host", held_by="test@host")
    job = api.get(f"/api/v1/finetune/distillation/jobs/{job_id}").json()
    assert job["status"] == "completed" and job["accepted"] == 16
    assert len(teacher.repeated_prompts()) <= 2  # at most the answers in flight at the signal are bought again


@pytest.mark.django_db
def test_the_operators_prices_override_the_list_prices():
    from datasets_app.distillation.engine.pricing import DEFAULT_PRICES
    from datasets_app.distillation.selectors import price_table
    from datasets_app.models import TeacherPrice

    TeacherPrice.objects.update_or_create(model="gpt-4o-mini", defaults={"input_per_mtok": 1, "output_per_mtok": 2})
    TeacherPrice.objects.update_or_create(model="my-gateway-model", defaults={"input_per_mtok": 3, "output_per_mtok": 4})
    table = price_table()
    assert table["gpt-4o-mini"] == (1.0, 2.0) and table["my-gateway-model"] == (3.0, 4.0)
    TeacherPrice.objects.filter(model="gpt-4o-mini").delete()
    assert price_table()["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]  # back to the list price
