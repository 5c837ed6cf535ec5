from __future__ import annotations

import pytest
from django.core.management import call_command

from nexus.catalog import base_model_register
from nexus.errors import NexusError
from nexus.models import BaseModel
from nexus.settings.env import parse_database_url


@pytest.mark.django_db
def test_models_endpoint_lists_the_catalog(api, base_model):
    results = api.get("/api/v1/finetune/models").json()["results"]
    assert [m["name"] for m in results] == ["SmolLM2-135M-Instruct"]
    m = results[0]
    assert m["parameter_count"] == 134_515_008
    assert m["context_length"] == 8192 and m["has_chat_template"] is True and m["trainable"] is True
    assert m["has_gguf"] is True
    assert "hf_path" not in m  # server paths are not shown to API users


@pytest.mark.django_db
def test_register_from_a_gguf_file_only(demo_model_files):
    model = base_model_register(name="smol-gguf", gguf_path=demo_model_files[1])
    assert model.architecture == "llama" and model.parameter_count > 100_000_000
    assert model.trainable is False


@pytest.mark.django_db
def test_register_rejects_a_folder_without_config(tmp_path):
    with pytest.raises(NexusError, match="config.json"):
        base_model_register(name="broken", hf_path=tmp_path)


@pytest.mark.django_db
def test_demo_model_command_is_idempotent(demo_model_files, capsys):
    call_command("nexus_demo_model")
    call_command("nexus_demo_model")
    assert BaseModel.objects.filter(name="SmolLM2-135M-Instruct").count() == 1
    assert "134,515,008 parameters" in capsys.readouterr().out


@pytest.mark.django_db
def test_openapi_schema_describes_the_api(api):
    r = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for p in ("/api/v1/finetune/datasets", "/api/v1/finetune/jobs/{job_id}", "/api/v1/finetune/models"):
        assert p in paths
    assert api.get("/api/docs/").status_code == 200


def test_database_url_parsing():
    db = parse_database_url("postgres://u:p%40ss@db.local:6543/nexus")
    assert (db["USER"], db["PASSWORD"], db["HOST"], db["PORT"], db["NAME"]) == ("u", "p@ss", "db.local", "6543", "nexus")
    with pytest.raises(ValueError, match="postgres"):
        parse_database_url("mysql://x/y")


def test_queues_are_cpu_and_gpu_and_training_goes_to_gpu(settings):
    from nexus.celery import app
    from nexus.jobs import kind_get

    assert sorted(q.name for q in app.conf.task_queues) == ["cpu", "gpu"]
    assert kind_get("training").queue == "gpu"
    assert {k: kind_get(k).queue for k in ("dataset", "export", "deployment")} == dict.fromkeys(
        ("dataset", "export", "deployment"), "cpu")
    assert app.conf.beat_schedule["nexus-reap"]["task"] == "nexus.jobs.reap"


def test_every_nexus_setting_read_from_the_environment_exists(settings):
    # A misspelled setting silently falls back to a default; every NEXUS_* name used in code must be defined.
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    used = set()
    for path in root.glob("*_app/**/*.py"):
        used |= set(re.findall(r"settings\.(NEXUS_[A-Z_]+)", path.read_text()))
    for path in (root / "nexus").rglob("*.py"):
        used |= set(re.findall(r"settings\.(NEXUS_[A-Z_]+)", path.read_text()))
    assert used, "expected the code to read NEXUS_* settings"
    for name in used:
        assert hasattr(settings, name), f"settings.{name} is used but not defined"


@pytest.mark.django_db
def test_unknown_api_path_gets_the_json_error_shape(api):
    r = api.get("/api/v1/finetune/nothing-here")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_malformed_json_body_gets_the_error_shape(api):
    r = api.post("/api/v1/finetune/jobs", data="{not json", content_type="application/json")
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "parse_error"


@pytest.mark.django_db
def test_a_user_made_outside_nexus_gets_a_personal_team_on_first_upload(client):
    from django.contrib.auth import get_user_model

    from datasets_app.models import Dataset
    from tests.factories import alpaca_upload

    admin = get_user_model().objects.create_superuser("root", password="pw-123456")
    client.force_login(admin)
    page = client.get("/finetune/datasets/upload/")
    assert b"root (personal)" in page.content
    team_id = admin.personal_team.pk
    r = client.post("/finetune/datasets/upload/", {"name": "d", "format": "auto", "team": team_id, "file": alpaca_upload()})
    assert r.status_code == 302
    assert Dataset.objects.get(name="d").team_id == team_id
