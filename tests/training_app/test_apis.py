from __future__ import annotations

import json

import pytest
from django.test import TestCase

from nexus.errors import NexusError
from nexus.models import JobEvent
from tests.factories import make_job, make_ready_dataset, record_event
from training_app.models import FineTuningJob


def job_body(dataset, **extra):
    return {"name": "pirate", "base_model": "SmolLM2-135M-Instruct", "dataset_id": dataset.pk, **extra}


@pytest.mark.django_db
def test_create_job_is_queued_with_seed_defaults(api, user, base_model):
    dataset = make_ready_dataset(user)
    r = api.post("/api/v1/finetune/jobs", job_body(dataset, training_config={"max_steps": 5}), format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0 and job["adapter_id"] is None
    assert job["adapter_path"] is None and job["completed_at"] is None and job["warnings"] == []
    assert job["training_config"]["max_steps"] == 5
    assert job["training_config"]["learning_rate"] == 2e-4  # default filled in
    assert job["training_config"]["warmup_steps"] == 100 and job["training_config"]["optimizer"] == "adamw_8bit"
    assert job["lora_config"]["rank"] == 32 and job["lora_config"]["alpha"] == 64
    assert job["qlora_config"]["enabled"] is True and job["qlora_config"]["double_quant"] is True
    assert api.get(f"/api/v1/finetune/jobs/{job['id']}").json()["name"] == "pirate"
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    assert events[0]["type"] == "status" and events[0]["data"]["status"] == "queued"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"training_config": {"learning_rate": 0}}, "training_config.learning_rate"),
        ({"lora_config": {"rank": -2}}, "lora_config.rank"),
        ({"lora_config": {"r": -2}}, "lora_config.rank"),
        ({"lora_config": {"r": 8, "rank": 8}}, "lora_config.rank"),
        ({"training_config": {"optim": "adamw_torch", "optimizer": "adamw_torch"}}, "training_config.optimizer"),
        ({"training_config": {"batchsize": 2}}, "training_config.batchsize"),
        ({"base_model": "gpt-17"}, "base_model"),
    ],
)
def test_bad_config_is_a_400_that_names_the_field(api, user, base_model, extra, field):
    dataset = make_ready_dataset(user)
    r = api.post("/api/v1/finetune/jobs", job_body(dataset, **extra), format="json")
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["message"].startswith(field)
    assert FineTuningJob.objects.count() == 0


@pytest.mark.django_db
def test_missing_required_field_is_a_400_naming_it(api, base_model):
    r = api.post("/api/v1/finetune/jobs", {"name": "x", "base_model": "SmolLM2-135M-Instruct"}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("dataset_id")


@pytest.mark.django_db
def test_cancel_of_a_queued_job_ends_it_at_once(api, user, base_model):
    job = make_job(user, base_model)
    r = api.delete(f"/api/v1/finetune/jobs/{job.pk}")
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"


@pytest.mark.django_db
def test_cancel_of_a_running_job_sets_the_flag_the_trainer_checks(api, user, base_model):
    job = make_job(user, base_model, status=FineTuningJob.Status.TRAINING)
    body = api.delete(f"/api/v1/finetune/jobs/{job.pk}").json()
    assert body["status"] == "training" and body["cancel_requested"] is True


@pytest.mark.django_db
def test_events_endpoint_resumes_after_a_seq(api, user, base_model):
    job = make_job(user, base_model)
    for i in range(5):
        record_event(job, f"line {i}")
    events = api.get(f"/api/v1/finetune/jobs/{job.pk}/events", {"after": 3}).json()["results"]
    assert [e["seq"] for e in events] == [4, 5]
    assert [e["message"] for e in events] == ["line 3", "line 4"]


@pytest.mark.django_db
def test_event_seq_is_dense_per_job(user, base_model):
    a = make_job(user, base_model)
    b = make_job(user, base_model, dataset=a.dataset)
    for job in (a, b, a):
        record_event(job, "x")
    assert list(JobEvent.objects.filter(job_id=a.pk, job_kind="training").values_list("seq", flat=True)) == [1, 2]
    assert list(JobEvent.objects.filter(job_id=b.pk, job_kind="training").values_list("seq", flat=True)) == [1]


@pytest.mark.django_db
def test_events_after_must_be_a_number(api, user, base_model):
    job = make_job(user, base_model)
    r = api.get(f"/api/v1/finetune/jobs/{job.pk}/events", {"after": "abc"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("after")


@pytest.mark.django_db
def test_a_job_is_claimed_once(user, base_model):
    from tests.factories import claim_job

    job = make_job(user, base_model)
    assert claim_job(job.pk, worker="w1@host") is True
    assert claim_job(job.pk, worker="w2@host") is False  # duplicate delivery
    job.refresh_from_db()
    assert job.status == "preparing" and job.worker == "w1@host"


@pytest.mark.django_db
def test_a_cancelled_queued_job_is_never_claimed(api, user, base_model):
    from tests.factories import claim_job

    job = make_job(user, base_model)
    api.delete(f"/api/v1/finetune/jobs/{job.pk}")
    assert claim_job(job.pk, worker="w1@host") is False


@pytest.mark.django_db
def test_a_restarted_worker_fails_its_orphaned_jobs_visibly_and_keeps_their_logs(api, user, base_model):
    from tests.factories import claim_job, reap_worker

    job = make_job(user, base_model)
    other = make_job(user, base_model, dataset=job.dataset)
    claim_job(job.pk, worker="w1@host")
    claim_job(other.pk, worker="w2@host")
    record_event(job, "step 1/10 loss 2.0")
    assert reap_worker("w1@host")["training"] == [job.pk]
    body = api.get(f"/api/v1/finetune/jobs/{job.pk}").json()
    assert body["status"] == "failed" and "worker" in body["error"]
    messages = [e["message"] for e in api.get(f"/api/v1/finetune/jobs/{job.pk}/events").json()["results"]]
    assert "step 1/10 loss 2.0" in messages and messages[-1].startswith("Failed")
    assert api.get(f"/api/v1/finetune/jobs/{other.pk}").json()["status"] == "preparing"


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_get_distinct_consecutive_seqs(user, base_model):
    import threading

    from django.db import connection

    job = make_job(user, base_model)
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(10):
                record_event(job, f"w{n}-{i}")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = list(JobEvent.objects.filter(job_kind="training", job_id=job.pk).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, 41))


@pytest.mark.django_db
def test_a_reaped_job_is_not_flipped_back_by_the_trainer_finishing(user, base_model):
    from training_app.runner import _finish
    from tests.factories import claim_job, reap_worker

    job = make_job(user, base_model)
    claim_job(job.pk, worker="w1@host")
    reap_worker("w1@host")
    job = _finish(job, FineTuningJob.Status.COMPLETED, "Completed")
    assert job.status == "failed"


@pytest.mark.django_db
def test_an_unreachable_broker_leaves_the_job_queued_with_a_visible_reason(api, user, base_model, monkeypatch):
    from nexus import tasks

    def refuse(*a, **kw):
        raise ConnectionRefusedError("Error 111 connecting to broker")

    monkeypatch.setattr(tasks.run_job, "apply_async", refuse)
    dataset = make_ready_dataset(user)
    with TestCase.captureOnCommitCallbacks() as callbacks:
        r = api.post("/api/v1/finetune/jobs", job_body(dataset), format="json")
    assert r.status_code == 201
    for callback in callbacks:
        callback()
    job_id = r.json()["id"]
    assert api.get(f"/api/v1/finetune/jobs/{job_id}").json()["status"] == "queued"
    messages = [e["message"] for e in api.get(f"/api/v1/finetune/jobs/{job_id}/events").json()["results"]]
    assert any("Could not reach the task queue" in m for m in messages)


@pytest.mark.django_db
def test_adapter_versions_count_up_per_team_and_name(user, base_model, tmp_path):
    from adapters_app.services import adapter_create_from_job

    import hashlib

    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["v_proj", "q_proj"], "use_rslora": False}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    a = make_job(user, base_model, name="same")
    b = make_job(user, base_model, dataset=a.dataset, name="same")
    first = adapter_create_from_job(job=a, adapter_dir=tmp_path, final_loss=1.0)
    second = adapter_create_from_job(job=b, adapter_dir=tmp_path, final_loss=0.5, metrics={"steps": 3})
    assert (first.version, second.version) == (1, 2) and first.path != second.path
    assert second.job == b and second.dataset == a.dataset and second.source == "job" and second.metrics == {"steps": 3}
    assert second.sha256 == hashlib.sha256(b"weights").hexdigest()
    # the config PEFT saved, defaults included (the job only named some of it)
    assert second.lora_config == {**b.lora_config, "rank": 4, "alpha": 8, "dropout": 0.0,
                                  "target_modules": ["q_proj", "v_proj"], "use_rslora": False}
    assert second.description == b.description
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(NexusError, match="not a PEFT adapter folder"):
        adapter_create_from_job(job=b, adapter_dir=tmp_path, final_loss=0.5)
