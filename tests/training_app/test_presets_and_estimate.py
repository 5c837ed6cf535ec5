from __future__ import annotations

import pytest

from tests.factories import make_job, make_ready_dataset

pytestmark = pytest.mark.django_db


def test_builtin_presets_are_listed_and_fetchable(api, base_model):
    presets = api.get("/api/v1/finetune/presets").json()["results"]
    assert [p["name"] for p in presets][:3] == ["Quick Start", "Balanced", "High Quality"]
    hq = api.get("/api/v1/finetune/presets/high-quality").json()
    assert hq["lora_config"]["r"] == 64 and hq["lora_config"]["target_modules"] == "all-linear"


def test_team_presets_are_validated_and_private(api, outsider_api, base_model):
    r = api.post("/api/v1/finetune/presets", {"name": "ours", "training_config": {"learning_rate": 5e-4}}, format="json")
    assert r.status_code == 201, r.content
    pid = r.json()["id"]
    assert api.get(f"/api/v1/finetune/presets/{pid}").json()["training_config"]["learning_rate"] == 5e-4
    assert outsider_api.get(f"/api/v1/finetune/presets/{pid}").status_code == 404
    assert pid not in [p["id"] for p in outsider_api.get("/api/v1/finetune/presets").json()["results"]]
    bad = api.post("/api/v1/finetune/presets", {"name": "bad", "lora_config": {"r": 0}}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("lora_config.r")
    dup = api.post("/api/v1/finetune/presets", {"name": "Balanced"}, format="json")
    assert dup.status_code == 400 and dup.json()["error"]["message"].startswith("name")


def test_a_job_from_a_preset_with_overrides(api, user, base_model):
    dataset = make_ready_dataset(user)
    r = api.post("/api/v1/finetune/jobs", {"name": "qs", "base_model": base_model.name, "dataset_id": dataset.pk,
                                           "preset": "quick-start", "training_config": {"max_steps": 3}}, format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["lora_config"]["r"] == 8 and job["training_config"]["num_epochs"] == 1
    assert job["training_config"]["max_steps"] == 3 and job["training_config"]["max_seq_length"] == 1024


def test_target_modules_must_exist_in_the_model_and_default_to_its_architecture(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"name": "t", "base_model": base_model.name, "dataset_id": dataset.pk}
    r = api.post("/api/v1/finetune/jobs", {**body, "lora_config": {"target_modules": ["qkv_proj"]}}, format="json")
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("lora_config.target_modules") and "qkv_proj" in message and "q_proj" in message
    job = api.post("/api/v1/finetune/jobs", body, format="json").json()
    assert job["lora_config"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    r = api.post("/api/v1/finetune/jobs", {**body, "training_config": {"max_seq_length": 16384}}, format="json")
    assert r.status_code == 400 and "8192-token context" in r.json()["error"]["message"]


def test_estimate_breaks_memory_down_and_times_from_measured_throughput(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"base_model": base_model.name, "dataset_id": dataset.pk, "training_config": {"max_seq_length": 512, "batch_size": 2}}
    est = api.post("/api/v1/finetune/estimate", body, format="json").json()
    memory = est["memory"]
    assert set(memory["breakdown_bytes"]) == {"weights", "lora_parameters_gradients_optimizer", "activations", "logits",
                                              "runtime_overhead"}
    assert memory["total_bytes"] == sum(memory["breakdown_bytes"].values())
    # bf16 weights of a 134.5M-parameter model; LoRA r=16 on q/k/v/o of 30 layers
    assert memory["breakdown_bytes"]["weights"] == 134_515_008 * 2
    assert memory["lora_parameters"] == 30 * 16 * ((576 + 576) + (576 + 192) * 2 + (576 + 576))
    assert est["time"]["available"] is False
    qlora = api.post("/api/v1/finetune/estimate", {**body, "qlora_config": {"enabled": True}}, format="json").json()["memory"]
    assert qlora["breakdown_bytes"]["weights"] < memory["breakdown_bytes"]["weights"]
    longer = api.post("/api/v1/finetune/estimate", {**body, "training_config": {"max_seq_length": 2048, "batch_size": 2}},
                      format="json").json()["memory"]
    assert longer["breakdown_bytes"]["activations"] > 4 * memory["breakdown_bytes"]["activations"]
    checkpointed = api.post("/api/v1/finetune/estimate", {**body, "training_config": {
        "max_seq_length": 2048, "batch_size": 2, "gradient_checkpointing": True}}, format="json").json()["memory"]
    assert checkpointed["breakdown_bytes"]["activations"] < longer["breakdown_bytes"]["activations"] / 5
    make_job(user, base_model, dataset=dataset, status="completed", metrics={"tokens_seen": 2000, "train_runtime_s": 10.0})
    timed = api.post("/api/v1/finetune/estimate", body, format="json").json()["time"]
    assert timed["available"] is True and timed["tokens_per_second"] == 200.0
    assert timed["seconds"] == round(timed["tokens"] / 200.0) and timed["steps"] >= 1


def test_estimate_rejects_bad_config_naming_the_field(api, base_model):
    r = api.post("/api/v1/finetune/estimate", {"base_model": base_model.name, "lora_config": {"lora_dropout": 2}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("lora_config.lora_dropout")
