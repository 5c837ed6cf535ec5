"""Whole system: REST API -> Postgres -> Redis -> a real Celery worker process -> real LoRA
training on the demo model -> a PEFT adapter that changed the model's answers."""
from __future__ import annotations

import difflib
import json
import time

import pytest

from tests.factories import alpaca_upload, pirate_records

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

RUNNING = ("preparing", "training", "evaluating", "exporting")  # a worker holds the job
PROMPT = "What is the capital of France?"
ANSWER = "Arr, matey! The answer be Paris, savvy?"


def wait_for(fetch, done, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {json.dumps(value, default=str)[:2000]}")
        time.sleep(0.5)
        value = fetch()
    return value


def upload_and_wait_ready(api, records) -> dict:
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(records), "name": "pirates"}, format="multipart")
    assert r.status_code == 201, r.content
    return wait_for(lambda: api.get(f"/api/v1/finetune/datasets/{r.json()['id']}").json(),
                    lambda d: d["status"] in ("ready", "error"), 120, "dataset processing by the worker")


def create_job(api, dataset_id: int, lora: dict | None = None, qlora: dict | None = None, **training) -> dict:
    """A small LoRA job (unquantized unless `qlora` says otherwise) in the design's names."""
    body = {
        "name": "pirate-e2e",
        "base_model": "SmolLM2-135M-Instruct",
        "dataset_id": dataset_id,
        "lora_config": {"rank": 8, "alpha": 16, "dropout": 0.0, **(lora or {})},
        "training_config": {"batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-3,
                            "max_seq_length": 96, "warmup_steps": 0, "lr_scheduler": "constant", **training},
        "qlora_config": {"enabled": False, **(qlora or {})},
    }
    r = api.post("/api/v1/finetune/jobs", body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def _generate(model, tokenizer, prompt: str) -> str:
    import torch

    enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=24, do_sample=False)
    return tokenizer.decode(out[0][enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _answer_nll(model, tokenizer, prompt: str, answer: str) -> float:
    import torch

    from training_app.engine.data import encode_conversation

    ex = encode_conversation(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], 256)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]]))
    return float(out.loss)


def test_upload_train_and_the_adapter_moves_toward_the_training_answers(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(16))
    assert dataset["status"] == "ready" and dataset["num_examples"] == 16

    job = create_job(api, dataset["id"], max_steps=12)
    job = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}").json(),
                   lambda j: j["status"] in ("completed", "failed", "cancelled"), 420, "training to finish")
    assert job["status"] == "completed", job["error"]
    assert job["current_step"] == job["total_steps"] == 12 and job["progress"] == 100

    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    metrics = [e["data"] for e in events if e["type"] == "metric"]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert all(m["tokens_per_second"] > 0 for m in metrics[1:])
    first, last = sum(m["loss"] for m in metrics[:3]) / 3, sum(m["loss"] for m in metrics[-3:]) / 3
    assert last < 0.5 * first, f"loss did not fall: {[round(m['loss'], 3) for m in metrics]}"
    assert job["best_loss"] == pytest.approx(min(m["loss"] for m in metrics))
    served = api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()
    assert [m["step"] for m in served["results"]] == list(range(1, 13))
    assert all(m["memory_bytes"] > 100_000_000 and m["seconds_per_step"] > 0 for m in served["results"])
    logs = api.get(f"/api/v1/finetune/jobs/{job['id']}/logs", {"limit": 2}).json()
    assert logs["count"] >= 5 and len(logs["results"]) == 2 and all(e["type"] != "metric" for e in logs["results"])

    adapter = api.get(f"/api/v1/finetune/adapters/{job['adapter_id']}").json()
    assert adapter["base_model"] == "SmolLM2-135M-Instruct" and adapter["version"] == 1

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters_app.models import LoRAAdapter
    from adapters_app.services import adapter_local_dir

    tokenizer = AutoTokenizer.from_pretrained(base_model.hf_path)
    model = AutoModelForCausalLM.from_pretrained(base_model.hf_path)
    model.eval()
    base_out = _generate(model, tokenizer, PROMPT)
    base_nll = _answer_nll(model, tokenizer, PROMPT, ANSWER)
    with adapter_local_dir(LoRAAdapter.objects.get(pk=adapter["id"])) as folder:
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
        tuned = PeftModel.from_pretrained(model, str(folder))
    tuned.eval()
    tuned_out = _generate(tuned, tokenizer, PROMPT)
    tuned_nll = _answer_nll(tuned, tokenizer, PROMPT, ANSWER)

    def similarity(text: str) -> float:
        return difflib.SequenceMatcher(None, text, ANSWER).ratio()

    assert tuned_out != base_out
    assert similarity(tuned_out) > similarity(base_out) + 0.2, (base_out, tuned_out)
    assert tuned_nll < base_nll / 2, (base_nll, tuned_nll)


def test_cancel_stops_a_running_job_within_a_step_and_keeps_its_logs(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(8))
    job = create_job(api, dataset["id"], max_steps=300, learning_rate=1e-5)
    running = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}").json(),
                       lambda j: j["current_step"] >= 2 or j["status"] not in ("queued", *RUNNING), 180, "two steps")
    assert running["status"] == "training"
    r = api.delete(f"/api/v1/finetune/jobs/{job['id']}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    step_at_cancel = r.json()["current_step"]
    done = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}").json(),
                    lambda j: j["status"] not in RUNNING, 60, "the job to stop")
    assert done["status"] == "cancelled"
    assert done["adapter_id"] is None
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    final = [e for e in events if e["type"] == "status"][-1]
    assert final["data"]["status"] == "cancelled"
    stopped_at = int(final["message"].split("step ")[1].split(" ")[0])
    # the step in flight when cancel arrived may finish (and one more if its log was still being written)
    assert stopped_at <= step_at_cancel + 2, (step_at_cancel, stopped_at)
    assert any(e["type"] == "metric" for e in events)


def test_a_job_that_fails_in_the_worker_is_failed_with_its_error_and_logs(celery_worker_process, base_model, api, tmp_path):
    import shutil

    from nexus.models import BaseModel

    # a registered model whose weights went missing on the worker: config and tokenizer only
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{base_model.hf_path}/{name}", broken / name)
    BaseModel.objects.create(name="broken", architecture="LlamaForCausalLM", hf_path=str(broken), context_length=8192)
    dataset = upload_and_wait_ready(api, pirate_records(4))
    body = {"name": "doomed", "base_model": "broken", "dataset_id": dataset["id"], "training_config": {"max_steps": 2}}
    r = api.post("/api/v1/finetune/jobs", body, format="json")
    assert r.status_code == 201, r.content
    job = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{r.json()['id']}").json(),
                   lambda j: j["status"] in ("completed", "failed", "cancelled"), 180, "the job to end")
    assert job["status"] == "failed"
    assert job["error"].startswith("The base model 'broken' has no weights on this worker"), job["error"]
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    # a clear sentence; the traceback and the server's paths stay in the worker's log
    assert not any("Traceback" in e["message"] or str(tmp_path) in e["message"] for e in events)
    assert events[-1]["data"].get("status") == "failed" and job["error"] in events[-1]["message"]


def test_a_broken_upload_processed_by_the_worker_ends_in_error_and_the_worker_goes_on(celery_worker_process, api):
    lines = "\n".join(json.dumps(r) for r in pirate_records(3))
    bad = upload_and_wait_ready_raw(api, b'[{"instruction": "a", "output": "b"}, {"instr')
    assert bad["status"] == "error" and "line 1" in bad["error_message"]
    good = upload_and_wait_ready_raw(api, lines.encode())
    assert good["status"] == "ready" and good["num_examples"] == 3


def upload_and_wait_ready_raw(api, raw: bytes) -> dict:
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=raw, name="raw.json")}, format="multipart")
    assert r.status_code == 201, r.content
    return wait_for(lambda: api.get(f"/api/v1/finetune/datasets/{r.json()['id']}").json(),
                    lambda d: d["status"] in ("ready", "error"), 120, "dataset processing by the worker")
