"""The design document's API is the contract: section 5.3's names and defaults in the OpenAPI
schema, the pages and the admin; the earlier API's rows keep working after the data migration."""
from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import make_job, make_ready_dataset

pytestmark = pytest.mark.django_db

LORA_DEFAULTS = {"rank": 32, "alpha": 64, "dropout": 0.05,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                 "bias": "none"}
TRAINING_DEFAULTS = {"learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation_steps": 4, "num_epochs": 3,
                     "max_steps": None, "warmup_steps": 100, "weight_decay": 0.01, "optimizer": "adamw_8bit",
                     "lr_scheduler": "cosine", "max_seq_length": 2048, "fp16": False, "bf16": True}
QLORA_DEFAULTS = {"enabled": True, "bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}


def _schema(api) -> dict:
    r = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    return r.json()


def test_the_openapi_schema_has_the_designs_models_fields_defaults_and_descriptions(api):
    schema = _schema(api)
    components = schema["components"]["schemas"]
    for name, defaults in (("LoRAConfig", LORA_DEFAULTS), ("TrainingConfig", TRAINING_DEFAULTS),
                           ("QLoRAConfig", QLORA_DEFAULTS)):
        properties = components[name]["properties"]
        # the design's fields first, in section 5.3's order, each with its default and a description
        assert list(properties)[:len(defaults)] == list(defaults), name
        for field, default in defaults.items():
            assert properties[field].get("default") == default, (name, field)
            assert properties[field]["description"], (name, field)
    assert "Also accepted as: r." in components["LoRAConfig"]["properties"]["rank"]["description"]
    assert "Also accepted as: optim." in components["TrainingConfig"]["properties"]["optimizer"]["description"]
    assert not {"r", "lora_alpha", "lora_dropout"} & set(components["LoRAConfig"]["properties"])
    assert not {"optim", "lr_scheduler_type", "precision"} & set(components["TrainingConfig"]["properties"])

    # the create-job body refers to them, and the outputs are section 5.3's models
    body = schema["paths"]["/api/v1/finetune/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    create = components[body["$ref"].rsplit("/", 1)[1]]["properties"]
    assert create["lora_config"] == {"$ref": "#/components/schemas/LoRAConfig"}
    assert create["training_config"] == {"$ref": "#/components/schemas/TrainingConfig"}
    assert create["qlora_config"] == {"$ref": "#/components/schemas/QLoRAConfig"}
    job = components["FineTuningJob"]["properties"]
    assert {"id", "name", "description", "base_model", "dataset_id", "lora_config", "training_config", "qlora_config",
            "status", "progress", "current_step", "total_steps", "current_loss", "best_loss", "metrics", "adapter_path",
            "created_at", "started_at", "completed_at", "error"} <= set(job)
    assert job["status"] == {"$ref": "#/components/schemas/TrainingStatus"}
    assert [v for v in components["TrainingStatus"]["enum"]][:8] == [
        "queued", "preparing", "training", "evaluating", "exporting", "completed", "failed", "cancelled"]
    adapter = components["LoRAAdapter"]["properties"]
    assert {"id", "name", "description", "base_model", "training_job_id", "lora_config", "file_path", "file_size",
            "metrics", "created_at", "is_merged", "gguf_path"} <= set(adapter)
    dataset = components["Dataset"]["properties"]
    assert {"id", "name", "description", "format", "status", "num_examples", "total_tokens", "file_path", "created_at",
            "updated_at", "validation_errors", "statistics"} <= set(dataset)
    assert components["DatasetStatus"]["enum"] == ["uploading", "processing", "ready", "error"]
    export = schema["paths"]["/api/v1/finetune/adapters/{adapter_id}/export"]["post"]["requestBody"]
    export_fields = components[export["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]
    assert "kind" not in export_fields.get("required", [])
    assert "gguf_path" in components["AdapterExport"]["properties"]
    # every request body is its own component (they once all shared one called "Input")
    assert "Input" not in components


def test_the_wizard_and_the_job_page_show_the_designs_names(user, base_model):
    client = Client()
    client.force_login(user)
    html = client.get("/finetune/training/new/").content.decode()
    for name in ("rank", "alpha", "dropout", "target_modules", "learning_rate", "batch_size",
                 "gradient_accumulation_steps", "num_epochs", "max_steps", "warmup_steps", "weight_decay", "optimizer",
                 "lr_scheduler", "max_seq_length", "fp16", "bf16"):
        assert f'name="{name}"' in html, name
    for old in ("r", "lora_alpha", "lora_dropout", "optim", "lr_scheduler_type", "warmup_ratio", "precision"):
        assert f'name="{old}"' not in html, old
    assert 'name="rank" value="32"' in html and 'name="warmup_steps" value="100"' in html
    assert '<input type="checkbox" name="qlora" id="id_qlora" checked>' in html  # QLoRA on by default
    assert '<input type="checkbox" name="bf16" aria-describedby="id_bf16_helptext" id="id_bf16" checked>' in html
    assert '<input type="checkbox" name="fp16" id="id_fp16">' in html

    job = make_job(user, base_model, warnings=["training_config.bf16: bf16 mixed precision is not supported at speed "
                                               "on this CPU; training in float32"])
    page = client.get(f"/finetune/training/{job.pk}/").content.decode()
    assert "LoRA rank=32, alpha=64" in page
    for key in ("rank", "alpha", "warmup_steps", "optimizer", "lr_scheduler", "bf16", "fp16", "quant_type"):
        assert f'data-key="{key}"><th>{key}</th>' in page, key
    assert 'id="job-warnings"' in page and "training in float32" in page


def test_the_admin_shows_the_designs_names(admin_client, user, base_model):
    job = make_job(user, base_model)
    html = admin_client.get(f"/admin/training_app/finetuningjob/{job.pk}/change/").content.decode()
    assert "Completed at" in html and "Warnings" in html
    assert "fine-tuning job" in admin_client.get("/admin/training_app/finetuningjob/").content.decode().lower()


def test_the_data_migration_moves_earlier_rows_to_the_designs_names(user, base_model):
    """The migration's conversion of a job, a preset and an adapter written by the earlier API."""
    import importlib

    names = importlib.import_module("training_app.migrations.0005_design_names")
    earlier_job = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    earlier_training = {"num_epochs": 3.0, "max_steps": -1, "batch_size": 4, "learning_rate": 2e-4, "warmup_ratio": 0.03,
                        "weight_decay": 0.0, "lr_scheduler_type": "cosine", "optim": "adamw_torch", "precision": "auto",
                        "packing": "padding_free"}
    lora = names.lora_to_design(earlier_job)
    training = names.training_to_design(earlier_training, full=True)
    assert lora == {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    assert training == {"num_epochs": 3.0, "max_steps": None, "batch_size": 4, "learning_rate": 2e-4,
                        "warmup_ratio": 0.03, "warmup_steps": None, "weight_decay": 0.0, "lr_scheduler": "cosine",
                        "optimizer": "adamw_torch", "fp16": False, "bf16": True, "packing": "padding_free"}
    assert names.training_to_design({"precision": "fp32", "optim": "adamw_8bit"}, full=False) == {
        "optimizer": "adamw_8bit", "fp16": False, "bf16": False}
    # a converted job still parses to what it trained with
    from training_app.engine.config import parse_job_config, warmup_steps_for

    config = parse_job_config(lora, training, {"enabled": False})
    assert (config.lora.rank, config.training.optimizer, config.training.bf16) == (16, "adamw_torch", True)
    assert warmup_steps_for(config, 100) == 3
    assert names.lora_to_earlier(lora) == earlier_job
    assert names.training_to_earlier(training)["precision"] == "auto"


@pytest.mark.django_db(transaction=True)
def test_rows_written_before_the_design_names_keep_working_after_migrating(user, base_model):
    """Rows as the earlier API stored them (PEFT/transformers names, dataset status 'uploaded'),
    migrated forward with Django's executor: the job parses to what it trained with, the team
    preset merges under the new names, the adapter answers in the design's names."""
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before = [("training_app", "0004_job_states_validation_control"), ("adapters_app", "0002_exports_deployments_lineage"),
              ("datasets_app", "0002_dataset_formats_dedup_splits")]
    ready = make_ready_dataset(user)  # with today's models, before the schema goes back
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        old = executor.loader.project_state(before).apps
        team = old.get_model("nexus", "Team").objects.get(pk=ready.team_id)
        Dataset = old.get_model("datasets_app", "Dataset")
        dataset = Dataset.objects.filter(team=team).first()
        Dataset.objects.filter(pk=dataset.pk).update(status="ready")
        waiting = Dataset.objects.create(team=team, name="waiting", status="uploaded", original_file="x.jsonl")
        job = old.get_model("training_app", "FineTuningJob").objects.create(
            team=team, name="earlier", base_model_id=base_model.pk, dataset_id=dataset.pk, status="completed",
            lora_config={"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj"], "bias": "none"},
            training_config={"num_epochs": 3.0, "max_steps": -1, "batch_size": 4, "warmup_ratio": 0.03,
                             "lr_scheduler_type": "linear", "optim": "adamw_torch", "precision": "fp32"},
            qlora_config={"enabled": False, "bits": 4, "quant_type": "nf4", "double_quant": True,
                          "compute_dtype": "bfloat16"})
        preset = old.get_model("training_app", "TrainingPreset").objects.create(
            team=team, name="ours", lora_config={"r": 8}, training_config={"optim": "adamw_torch", "precision": "fp16"})
        adapter = old.get_model("adapters_app", "LoRAAdapter").objects.create(
            team=team, name="earlier", base_model_id=base_model.pk, job_id=job.pk, path="adapters/x",
            lora_config={"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "use_rslora": False},
            training_config=job.training_config)
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)

    from adapters_app.models import LoRAAdapter
    from datasets_app.models import Dataset as DatasetNow
    from training_app.models import FineTuningJob, TrainingPreset
    from training_app.services import parse_config

    assert DatasetNow.objects.get(pk=waiting.pk).status == "uploading"
    migrated = FineTuningJob.objects.get(pk=job.pk)
    assert migrated.lora_config == {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj"], "bias": "none"}
    config = parse_config(migrated.lora_config, migrated.training_config, migrated.qlora_config)
    tc = config.training
    assert (tc.optimizer, tc.lr_scheduler, tc.fp16, tc.bf16, tc.max_steps) == ("adamw_torch", "linear", False, False, None)
    assert (tc.warmup_ratio, tc.warmup_steps) == (0.03, None)
    ours = TrainingPreset.objects.get(pk=preset.pk)
    assert ours.lora_config == {"rank": 8}
    assert ours.training_config == {"optimizer": "adamw_torch", "fp16": True, "bf16": False}
    assert LoRAAdapter.objects.get(pk=adapter.pk).lora_config == {"rank": 16, "alpha": 32, "dropout": 0.05,
                                                                  "use_rslora": False}
