"""Through the real worker: validation loss with the best checkpoint and early stopping, the job's
phases, a checkpoint on request, and the memory estimate against the peak that a run measured."""
from __future__ import annotations

import pytest

from tests.e2e.test_finetune_e2e import create_job, upload_and_wait_ready, wait_for
from tests.factories import pirate_records

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ENDED = ("completed", "failed", "cancelled", "paused")


def get(api, job_id: int) -> dict:
    return api.get(f"/api/v1/finetune/jobs/{job_id}").json()


def why(api, job: dict) -> str:
    """The job's error with the traceback the worker logged, for a failed assertion."""
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/logs", {"level": "error"}).json()["results"]
    return "\n".join([job["error"], *(e["message"] for e in events)])


def test_validation_early_stopping_best_checkpoint_and_phases(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(16))
    # 12 to train, 4 held out; every evaluation must improve by more than 10 to count, so the
    # second one (step 4) ends the run
    job = create_job(api, dataset["id"], max_steps=12, save_steps=2, validation_split=0.25, early_stopping_patience=1,
                     early_stopping_threshold=10.0)
    done = wait_for(lambda: get(api, job["id"]), lambda j: j["status"] in ENDED, 300, "the job to end")
    assert done["status"] == "completed", why(api, done)
    assert done["current_step"] == 4 and done["metrics"]["stopped_early"] is True
    metrics = api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()
    assert [p["step"] for p in metrics["eval"]] == [2, 4]
    best = min(metrics["eval"], key=lambda p: p["eval_loss"])
    assert done["best_eval_loss"] == pytest.approx(best["eval_loss"]) and done["best_checkpoint_step"] == best["step"]
    assert metrics["best_checkpoint_step"] == best["step"]
    saved = api.get(f"/api/v1/finetune/jobs/{job['id']}/checkpoints").json()["results"]
    assert [c["step"] for c in saved if c["is_best"]] == [best["step"]]
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    phases = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert phases == ["queued", "preparing", "training", "evaluating", "training", "evaluating", "training", "exporting",
                      "completed"], phases
    messages = [e["message"] for e in events]
    assert any(m.startswith("Training started: 12 steps over 12 examples (validation: 4 examples)") for m in messages)
    assert any(m.startswith("Completed 4 steps") and "(stopped early)" in m for m in messages)


def test_a_checkpoint_on_request_is_saved_after_the_current_step(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(8))
    job = create_job(api, dataset["id"], max_steps=30, save_steps=1000, learning_rate=1e-5)
    wait_for(lambda: get(api, job["id"]), lambda j: j["current_step"] >= 2 or j["status"] in ENDED, 180, "two steps")
    r = api.post(f"/api/v1/finetune/jobs/{job['id']}/checkpoint")
    assert r.status_code == 202, r.content
    asked_at = r.json()["current_step"]

    def saved_events():
        events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
        return [e for e in events if "checkpoint_step" in e["data"]]

    saved = wait_for(saved_events, lambda found: found, 60, "the checkpoint")
    step = saved[0]["data"]["checkpoint_step"]
    assert saved[0]["message"] == f"Checkpoint saved at step {step} on request"
    assert asked_at <= step <= asked_at + 2  # after the step in flight (and the one whose log was being written)
    listed = api.get(f"/api/v1/finetune/jobs/{job['id']}/checkpoints").json()["results"]
    assert [c["step"] for c in listed] == [step] and listed[0]["has_optimizer_state"]
    assert get(api, job["id"])["checkpoint_requested"] is False
    api.delete(f"/api/v1/finetune/jobs/{job['id']}")
    assert wait_for(lambda: get(api, job["id"]), lambda j: j["status"] in ENDED, 60, "the stop")["status"] == "cancelled"


@pytest.mark.parametrize("qlora", [False, True], ids=["lora", "qlora"])
def test_the_memory_estimate_is_within_35_percent_of_the_measured_peak(celery_worker_process, base_model, api, qlora):
    # long answers fill every sequence to max_seq_length: the case the estimate sizes for. The loss
    # holds one chunk of logits (engine/loss.py), the layers keep engine/lean.py's tensors, and on a
    # CPU glibc's heap slack is an estimate part of its own; QLoRA's peak runs above LoRA's from that
    # slack, not from tensors (docs/architecture.md, "Memory per token in training")
    words = "the sea is wide and the wind is strong so hoist the sails and mind the rum my hearties".split()
    records = [{"instruction": f"Tell tale number {i}.", "output": " ".join(words[(i + j) % len(words)] for j in range(700))}
               for i in range(8)]
    dataset = upload_and_wait_ready(api, records)
    assert dataset["status"] == "ready", dataset
    r = api.post("/api/v1/finetune/jobs", {
        "name": "memory", "base_model": "SmolLM2-135M-Instruct", "dataset_id": dataset["id"],
        "lora_config": {"rank": 16, "alpha": 32},
        "training_config": {"max_steps": 2, "batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 512},
        "qlora_config": {"enabled": qlora}}, format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    done = wait_for(lambda: get(api, job["id"]), lambda j: j["status"] in ENDED, 400, "the job to end")
    assert done["status"] == "completed", why(api, done)
    measured = done["metrics"]["peak_memory_bytes"]
    estimate = api.post("/api/v1/finetune/estimate", {
        "base_model": "SmolLM2-135M-Instruct", "device": "cpu", "lora_config": done["lora_config"],
        "training_config": done["training_config"], "qlora_config": done["qlora_config"]}, format="json").json()
    predicted = estimate["memory"]["total_bytes"]
    error = predicted / measured - 1
    print(f"\n{'QLoRA' if qlora else 'LoRA'} peak memory: estimated {predicted / 2**30:.2f} GiB, measured "
          f"{measured / 2**30:.2f} GiB, error {100 * error:+.1f}%")
    assert abs(error) <= 0.35, (predicted, measured, estimate["memory"]["breakdown_bytes"])
