from __future__ import annotations

import pytest

from tests.factories import make_job, make_ready_dataset

pytestmark = pytest.mark.django_db


SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# appendix A, verbatim
APPENDIX_A = {
    "quick-start": {"lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
                    "training": {"learning_rate": 3e-4, "batch_size": 8, "num_epochs": 1, "warmup_steps": 50}},
    "balanced": {"lora": {"rank": 32, "alpha": 64, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                 "training": {"learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation_steps": 4, "num_epochs": 3,
                              "warmup_steps": 100}},
    "high-quality": {"lora": {"rank": 128, "alpha": 256, "dropout": 0.1, "target_modules": SEVEN},
                     "training": {"learning_rate": 1e-4, "batch_size": 2, "gradient_accumulation_steps": 8,
                                  "num_epochs": 5, "warmup_steps": 200, "weight_decay": 0.01}},
}


def test_builtin_presets_are_appendix_a_exactly(api, base_model):
    presets = api.get("/api/v1/finetune/presets").json()["results"]
    assert [p["name"] for p in presets][:3] == ["Quick Start", "Balanced", "High Quality"]
    for slug, values in APPENDIX_A.items():
        preset = api.get(f"/api/v1/finetune/presets/{slug}").json()
        assert preset["lora_config"] == preset["lora"] == values["lora"]
        assert preset["training_config"] == preset["training"] == values["training"]


def test_team_presets_are_validated_and_private(api, outsider_api, base_model):
    r = api.post("/api/v1/finetune/presets", {"name": "ours", "training_config": {"learning_rate": 5e-4}}, format="json")
    assert r.status_code == 201, r.content
    pid = r.json()["id"]
    assert api.get(f"/api/v1/finetune/presets/{pid}").json()["training_config"]["learning_rate"] == 5e-4
    assert outsider_api.get(f"/api/v1/finetune/presets/{pid}").status_code == 404
    assert pid not in [p["id"] for p in outsider_api.get("/api/v1/finetune/presets").json()["results"]]
    bad = api.post("/api/v1/finetune/presets", {"name": "bad", "lora_config": {"r": 0}}, format="json")
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "lora_config.rank: must be between 1 and 1024 (given as lora_config.r)"
    # appendix A's spelling, stored under the design's names whatever the caller's spelling
    r = api.post("/api/v1/finetune/presets", {"name": "mine", "lora": {"r": 4, "lora_alpha": 8},
                                              "training": {"optim": "adamw_torch"}}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["lora_config"] == {"rank": 4, "alpha": 8} and r.json()["training"] == {"optimizer": "adamw_torch"}
    both = api.post("/api/v1/finetune/presets", {"name": "both", "lora": {"rank": 4}, "lora_config": {"rank": 8}},
                    format="json")
    assert both.status_code == 400 and "lora_config" in both.json()["error"]["message"]
    dup = api.post("/api/v1/finetune/presets", {"name": "Balanced"}, format="json")
    assert dup.status_code == 400 and dup.json()["error"]["message"].startswith("name")


def test_a_job_from_a_preset_with_overrides(api, user, base_model):
    dataset = make_ready_dataset(user)
    r = api.post("/api/v1/finetune/jobs", {"name": "qs", "base_model": base_model.name, "dataset_id": dataset.pk,
                                           "preset": "quick-start", "training_config": {"max_steps": 3}}, format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["lora_config"]["rank"] == 8 and job["lora_config"]["target_modules"] == ["q_proj", "v_proj"]
    assert job["training_config"]["num_epochs"] == 1 and job["training_config"]["warmup_steps"] == 50
    assert job["training_config"]["max_steps"] == 3 and job["training_config"]["max_seq_length"] == 2048  # a default
    # the caller's alias replaces the preset's field, whatever the spelling
    r = api.post("/api/v1/finetune/jobs", {"name": "hq", "base_model": base_model.name, "dataset_id": dataset.pk,
                                           "preset": "high-quality", "lora_config": {"r": 16},
                                           "training_config": {"warmup_ratio": 0.1}}, format="json")
    assert r.status_code == 201, r.content
    lora, training = r.json()["lora_config"], r.json()["training_config"]
    assert (lora["rank"], lora["alpha"], lora["dropout"]) == (16, 256, 0.1)
    assert (training["warmup_steps"], training["warmup_ratio"], training["num_epochs"]) == (None, 0.1, 5)


def test_target_modules_must_exist_in_the_model_and_default_to_the_seven_projections(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"name": "t", "base_model": base_model.name, "dataset_id": dataset.pk}
    r = api.post("/api/v1/finetune/jobs", {**body, "lora_config": {"target_modules": ["qkv_proj"]}}, format="json")
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert message.startswith("lora_config.target_modules") and "qkv_proj" in message and "q_proj" in message
    job = api.post("/api/v1/finetune/jobs", body, format="json").json()
    assert job["lora_config"]["target_modules"] == SEVEN and job["warnings"] == []
    r = api.post("/api/v1/finetune/jobs", {**body, "training_config": {"max_seq_length": 16384}}, format="json")
    assert r.status_code == 400 and "8192-token context" in r.json()["error"]["message"]


def test_estimate_breaks_memory_down_and_times_from_measured_throughput(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"base_model": base_model.name, "dataset_id": dataset.pk, "training_config": {"max_seq_length": 512, "batch_size": 2},
            "lora_config": {"rank": 16, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
            "qlora_config": {"enabled": False}}
    est = api.post("/api/v1/finetune/estimate", body, format="json").json()
    memory = est["memory"]
    assert set(memory["breakdown_bytes"]) == {"weights", "lora_parameters_gradients_optimizer", "activations", "logits",
                                              "runtime_overhead", "allocator_slack"}
    assert memory["total_bytes"] == sum(memory["breakdown_bytes"].values())
    # bf16 weights of a 134.5M-parameter model; LoRA r=16 on q/k/v/o of 30 layers
    assert memory["breakdown_bytes"]["weights"] == 134_515_008 * 2
    assert memory["lora_parameters"] == 30 * 16 * ((576 + 576) + (576 + 192) * 2 + (576 + 576))
    assert est["time"]["available"] is False
    qlora = api.post("/api/v1/finetune/estimate", {**body, "qlora_config": {"enabled": True}}, format="json").json()["memory"]
    assert qlora["breakdown_bytes"]["weights"] < memory["breakdown_bytes"]["weights"]
    longer = api.post("/api/v1/finetune/estimate", {**body, "training_config": {"max_seq_length": 2048, "batch_size": 2}},
                      format="json").json()["memory"]
    # the layers keep tensors linear in the tokens (attention per example keeps no scores: engine/lean.py)
    assert longer["breakdown_bytes"]["activations"] == 4 * memory["breakdown_bytes"]["activations"]
    checkpointed = api.post("/api/v1/finetune/estimate", {**body, "training_config": {
        "max_seq_length": 2048, "batch_size": 2, "gradient_checkpointing": True}}, format="json").json()["memory"]
    assert checkpointed["breakdown_bytes"]["activations"] < longer["breakdown_bytes"]["activations"] / 5
    make_job(user, base_model, dataset=dataset, status="completed", metrics={"tokens_seen": 2000, "train_runtime_s": 10.0})
    timed = api.post("/api/v1/finetune/estimate", body, format="json").json()["time"]
    assert timed["available"] is True and timed["tokens_per_second"] == 200.0
    assert timed["seconds"] == round(timed["tokens"] / 200.0) and timed["steps"] >= 1


def test_the_dataset_statistics_and_the_estimate_api_time_a_default_job_alike(api, user, base_model):
    """One formula: content plus the chat template per example, cut at the default max_seq_length (2048)."""
    long = [{"instruction": f"Tell the long tale number {i}.", "output": "Arr, the sea was wide. " * 500} for i in range(4)]
    for records, capped in ((None, False), (long, True)):
        dataset = make_ready_dataset(user, records=records)
        make_job(user, base_model, dataset=dataset, status="completed", metrics={"tokens_seen": 2000, "train_runtime_s": 10.0})
        page = api.get(f"/api/v1/finetune/datasets/{dataset.pk}/statistics").json()["training_estimate"]
        timed = api.post("/api/v1/finetune/estimate", {"base_model": base_model.name, "dataset_id": dataset.pk},
                         format="json").json()["time"]
        assert (page["tokens"], page["seconds"]) == (timed["tokens"], timed["seconds"])
        assert (page["tokens"] == 2048 * dataset.num_usable * 3) is capped


def test_estimate_rejects_bad_config_naming_the_field(api, base_model):
    r = api.post("/api/v1/finetune/estimate", {"base_model": base_model.name, "lora_config": {"lora_dropout": 2}}, format="json")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "lora_config.dropout: must be in [0, 1) (given as lora_config.lora_dropout)"


def test_defaults_that_do_not_fit_the_model_are_replaced_and_said(api, user, base_model, tmp_path):
    """A Phi-3 has no separate q/k/v or gate/up projections and, here, a 1024-token context: the
    design's defaults become its architecture's targets and its context, each said in `warnings`
    and in the log. A value the caller gave that does not fit is still a 400."""
    from transformers import AutoModelForCausalLM, Phi3Config

    from nexus.catalog import base_model_register

    config = Phi3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=1024, pad_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    phi = base_model_register(name="tiny-phi3", hf_path=tmp_path)
    dataset = make_ready_dataset(user)
    body = {"name": "phi", "base_model": phi.name, "dataset_id": dataset.pk}
    r = api.post("/api/v1/finetune/jobs", body, format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["lora_config"]["target_modules"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # appendix C
    assert job["training_config"]["max_seq_length"] == 1024
    assert len(job["warnings"]) == 2
    assert job["warnings"][0].startswith("lora_config.target_modules: tiny-phi3 has no q_proj, k_proj, v_proj, gate_proj, up_proj")
    assert job["warnings"][1] == ("training_config.max_seq_length: the default 2048 is longer than the 1024-token context "
                                  "of tiny-phi3; using 1024")
    logged = [e["message"] for e in api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
              if e["level"] == "warning"]
    assert logged == job["warnings"]
    estimate = api.post("/api/v1/finetune/estimate", {"base_model": phi.name}, format="json").json()
    assert estimate["warnings"] == job["warnings"]
    given = api.post("/api/v1/finetune/jobs", {**body, "training_config": {"max_seq_length": 2048}}, format="json")
    assert given.status_code == 400 and given.json()["error"]["message"].startswith("training_config.max_seq_length: 2048")
