from __future__ import annotations

import json

import pytest
from django.core.files.storage import default_storage

from datasets_app.models import Dataset
from datasets_app.services import dataset_process
from tests.factories import claim_dataset
from nexus.events import job_events_after
from tests.factories import alpaca_upload, pirate_records


@pytest.mark.django_db
def test_upload_stores_the_original_and_processing_makes_it_ready(api, user, base_model):
    raw = ("\n".join(json.dumps(r) for r in pirate_records(5)) + "\n").encode()
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=raw, name="p.jsonl"), "name": "Pirates"}, format="multipart")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["status"] == "uploading" and body["name"] == "Pirates"
    with default_storage.open(body["file_path"], "rb") as fh:
        assert fh.read() == raw  # the original is kept byte for byte

    assert claim_dataset(body["id"])
    dataset_process(dataset_id=body["id"])
    detail = api.get(f"/api/v1/finetune/datasets/{body['id']}").json()
    assert detail["status"] == "ready"
    assert detail["format"] == "alpaca"
    assert detail["num_examples"] == 5
    assert detail["total_tokens"] > 5 * 5
    assert detail["statistics"]["tokenizer"] == base_model.name
    assert detail["statistics"]["tokens_p50"] > 0
    assert sum(detail["statistics"]["token_histogram"]["counts"]) == 5


@pytest.mark.django_db
def test_processing_a_broken_file_ends_in_error_naming_the_line(api):
    raw = b'[\n{"instruction": "a", "output": "b"},\n{"instruction": '
    body = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=raw, name="t.json")}, format="multipart").json()
    assert claim_dataset(body["id"])
    dataset = dataset_process(dataset_id=body["id"])
    assert dataset.status == Dataset.Status.ERROR
    assert "line 3" in dataset.error_message
    detail = api.get(f"/api/v1/finetune/datasets/{body['id']}").json()
    assert detail["status"] == "error" and "line 3" in detail["error_message"]
    assert default_storage.exists(detail["file_path"])  # the upload is not thrown away


@pytest.mark.django_db
def test_invalid_records_are_listed_and_excluded(api, base_model):
    lines = [json.dumps(r) for r in pirate_records(4)] + ["not json", json.dumps({"instruction": "x"})]
    body = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw="\n".join(lines).encode())}, format="multipart").json()
    claim_dataset(body["id"])
    dataset_process(dataset_id=body["id"])
    detail = api.get(f"/api/v1/finetune/datasets/{body['id']}").json()
    assert detail["status"] == "ready" and detail["num_examples"] == 4 and detail["num_invalid"] == 2
    assert [(e["line"], e["category"]) for e in detail["validation_errors"]] == [(5, "parse"), (6, "schema")]


@pytest.mark.django_db
def test_empty_upload_is_rejected_with_the_error_shape(api):
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=b"", name="e.jsonl")}, format="multipart")
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert "empty" in error["message"].lower()


@pytest.mark.django_db
def test_unknown_format_is_a_400_naming_the_field(api):
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(), "format": "yaml"}, format="multipart")
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("format")


@pytest.mark.django_db
def test_upload_over_the_size_limit_is_413(api, settings):
    settings.NEXUS_MAX_UPLOAD_BYTES = 100
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(pirate_records(10))}, format="multipart")
    assert r.status_code == 413
    assert "limit" in r.json()["error"]["message"]


@pytest.mark.django_db
def test_anonymous_requests_are_refused(client):
    r = client.get("/api/v1/finetune/datasets")
    assert r.status_code in (401, 403)
    assert "error" in r.json()


@pytest.mark.django_db
def test_a_dataset_whose_worker_died_mid_processing_is_processed_again(api, user, base_model):
    from django.utils import timezone

    from nexus.jobs.reaper import reap

    body = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload()}, format="multipart").json()
    assert claim_dataset(body["id"])
    Dataset.objects.filter(pk=body["id"]).update(updated_at=timezone.now() - timezone.timedelta(hours=2))
    assert body["id"] in reap(resend=False, check_hosts=False).orphaned["dataset"]
    assert Dataset.objects.get(pk=body["id"]).status == Dataset.Status.UPLOADING
    assert claim_dataset(body["id"])  # the re-sent task can claim it again
    assert dataset_process(dataset_id=body["id"]).status == Dataset.Status.READY
    messages = [e.message for e in job_events_after(kind="dataset", job_id=body["id"])]
    assert any("interrupted" in m for m in messages)


@pytest.mark.django_db
def test_a_fresh_processing_dataset_is_left_alone(api, base_model):
    from nexus.jobs.reaper import reap

    body = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload()}, format="multipart").json()
    assert claim_dataset(body["id"])
    assert body["id"] not in reap(resend=False, check_hosts=False).orphaned["dataset"]
    assert Dataset.objects.get(pk=body["id"]).status == Dataset.Status.PROCESSING
