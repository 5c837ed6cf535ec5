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
    preview = api.get(f"/api/v1/finetune/distillation/jobs/{job_id}/preview").json()
    assert preview["count"] == 5
    assert {i["prompt"] for i in preview["results"]} == set(PROMPTS)
    assert all(i["status"] == "accepted" and i["response"].startswith("Here is what") for i in preview["results"])
    r = api.post(f"/api/v1/finetune/distillation/jobs/{job_id}/approve", {"name": "distilled"}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["origin"]["job_id"] == job_id
    assert DistillationJob.objects.get(pk=job_id).dataset_id == r.json()["dataset_id"]
