"""The dataset API of section 7.1 through the real services (processing run as the worker would)."""
from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage

from datasets_app.models import Dataset
from datasets_app.services import dataset_process
from tests.factories import claim_dataset
from tests.factories import alpaca_upload, make_job

pytestmark = pytest.mark.django_db


def upload(api, rows=None, raw: bytes | None = None, name="d.jsonl", **extra) -> dict:
    if raw is None:
        raw = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=raw, name=name), **extra}, format="multipart")
    assert r.status_code == 201, r.content
    return r.json()


def process(dataset_id: int) -> Dataset:
    assert claim_dataset(dataset_id)
    return dataset_process(dataset_id=dataset_id)


def qa(n: int, prefix: str = "q") -> list[dict]:
    return [{"instruction": f"{prefix} question number {i} about topic {i * 7} please answer",
             "output": f"answer {i} is {i * 3}, explained with some words about {prefix} and number {i}"} for i in range(n)]


def with_duplicates() -> list[dict]:
    rows = qa(40)
    rows.append(dict(rows[3]))  # exact copy
    near = dict(rows[5])
    near["output"] = rows[5]["output"] + " indeed"  # near duplicate
    rows.append(near)
    rows.append({"instruction": rows[7]["instruction"], "output": "a completely different reply"})  # same prompt
    return rows


def test_detail_patch_and_delete_removes_the_files(api, base_model):
    d = upload(api, qa(5))
    process(d["id"])
    r = api.patch(f"/api/v1/finetune/datasets/{d['id']}", {"name": "renamed", "description": "new"}, format="json")
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    assert api.patch(f"/api/v1/finetune/datasets/{d['id']}", {"name": ""}, format="json").status_code == 400
    dataset = Dataset.objects.get(pk=d["id"])
    files = [dataset.original_file.name, dataset.normalized_file]
    assert all(default_storage.exists(f) for f in files)
    with pytest.MonkeyPatch.context():
        from django.test import TestCase

        with TestCase.captureOnCommitCallbacks(execute=True):
            assert api.delete(f"/api/v1/finetune/datasets/{d['id']}").status_code == 204
    assert not any(default_storage.exists(f) for f in files)
    assert api.get(f"/api/v1/finetune/datasets/{d['id']}").status_code == 404


def test_a_dataset_used_by_a_job_cannot_be_deleted(api, user, base_model):
    job = make_job(user, base_model)
    r = api.delete(f"/api/v1/finetune/datasets/{job.dataset_id}")
    assert r.status_code == 409 and "jobs" in r.json()["error"]["message"]


def test_preview_pages_through_normalized_conversations(api, base_model):
    d = upload(api, qa(25))
    process(d["id"])
    body = api.get(f"/api/v1/finetune/datasets/{d['id']}/preview", {"offset": 20, "limit": 10}).json()
    assert body["count"] == 25 and len(body["results"]) == 5
    assert body["results"][0]["messages"][0] == {"role": "user", "content": qa(25)[20]["instruction"]}
    assert body["results"][0]["source_line"] == 21
    assert api.get(f"/api/v1/finetune/datasets/{d['id']}/preview", {"limit": "many"}).status_code == 400


def test_statistics_have_token_distribution_duplicates_and_an_honest_estimate(api, user, base_model):
    d = upload(api, with_duplicates())
    process(d["id"])
    stats = api.get(f"/api/v1/finetune/datasets/{d['id']}/statistics").json()
    assert stats["total_records"] == 43 and stats["valid"] == 43 and stats["invalid"] == 0
    assert stats["tokens_p50"] <= stats["tokens_p95"] <= stats["tokens_max"]
    assert stats["prompt_tokens"] + stats["response_tokens"] == stats["total_tokens"]
    assert sum(stats["token_histogram"]["counts"]) == 43
    assert stats["duplicates"]["exact_duplicates"] == 1 and stats["duplicates"]["near_duplicates"] == 1
    assert stats["training_estimate"]["available"] is False  # nothing measured yet: no guess
    job = make_job(user, base_model, status="completed", metrics={"tokens_seen": 3000, "train_runtime_s": 20.0})
    estimate = api.get(f"/api/v1/finetune/datasets/{d['id']}/statistics").json()["training_estimate"]
    assert estimate["available"] is True and estimate["tokens_per_second"] == 150.0
    assert estimate["measured_by_jobs"] == [job.pk]
    assert estimate["seconds"] == round(estimate["tokens"] / 150.0)
    assert estimate["tokens"] > 3 * stats["total_tokens"]  # 3 epochs plus the chat template's tokens


def test_duplicate_clusters_are_listed_and_removal_is_recorded_and_reversible(api, base_model):
    d = upload(api, with_duplicates())
    process(d["id"])
    dup = api.get(f"/api/v1/finetune/datasets/{d['id']}/duplicates").json()
    assert [c["members"] for c in dup["exact"]] == [[3, 40]]
    assert [c["members"] for c in dup["near"]] == [[5, 41]]
    assert [c["members"] for c in dup["overlap"]] == [[7, 42]]
    assert dup["config"]["threshold"] == 0.8 and dup["config"]["shingle_size"] == 3
    body = api.post(f"/api/v1/finetune/datasets/{d['id']}/duplicates", {"action": "remove"}, format="json").json()
    assert body["excluded_indices"] == [40, 41] and body["num_usable"] == 41
    assert body["dedup_actions"][-1]["action"] == "remove" and body["dedup_actions"][-1]["by"] == "alice"
    preview = api.get(f"/api/v1/finetune/datasets/{d['id']}/preview", {"limit": 200}).json()
    assert preview["count"] == 43 and [r["source_index"] for r in preview["results"] if r["excluded"]] == [40, 41]
    exported = api.get(f"/api/v1/finetune/datasets/{d['id']}/download", {"format": "alpaca"}).content.decode().splitlines()
    assert len(exported) == 41
    body = api.post(f"/api/v1/finetune/datasets/{d['id']}/duplicates", {"action": "restore"}, format="json").json()
    assert body["excluded_indices"] == [] and body["num_usable"] == 43


def test_split_is_seeded_80_10_10_and_keeps_near_duplicates_on_one_side(api, base_model):
    d = upload(api, with_duplicates() + qa(57, prefix="extra"))
    process(d["id"])
    first = api.post(f"/api/v1/finetune/datasets/{d['id']}/split", {}, format="json").json()["results"]
    assert [s["split"] for s in first] == ["train", "val", "test"]
    sizes = [s["num_examples"] for s in first]
    assert sum(sizes) == 100 and 78 <= sizes[0] <= 82 and 8 <= sizes[1] <= 12
    members = {}
    for s in first:
        rows = api.get(f"/api/v1/finetune/datasets/{s['id']}/preview", {"limit": 200}).json()["results"]
        members[s["split"]] = {r["source_index"] for r in rows}
        assert s["status"] == "ready" and s["parent_id"] == d["id"]
    for pair in ([3, 40], [5, 41]):
        assert sum(1 for name in members if set(pair) <= members[name]) == 1, pair
    again = api.post(f"/api/v1/finetune/datasets/{d['id']}/split", {"seed": 42}, format="json").json()["results"]
    for a, b in zip(first, again):
        rows_a = api.get(f"/api/v1/finetune/datasets/{a['id']}/preview", {"limit": 200}).json()["results"]
        rows_b = api.get(f"/api/v1/finetune/datasets/{b['id']}/preview", {"limit": 200}).json()["results"]
        assert [r["source_index"] for r in rows_a] == [r["source_index"] for r in rows_b]
    r = api.post(f"/api/v1/finetune/datasets/{d['id']}/split", {"train": 0.9, "val": 0.2, "test": 0.1}, format="json")
    assert r.status_code == 400 and "must be 1" in r.json()["error"]["message"]


def test_split_is_usable_as_a_training_dataset(api, base_model):
    d = upload(api, qa(30))
    process(d["id"])
    train = api.post(f"/api/v1/finetune/datasets/{d['id']}/split", {}, format="json").json()["results"][0]
    r = api.post("/api/v1/finetune/jobs", {"name": "on-split", "base_model": base_model.name, "dataset_id": train["id"]},
                 format="json")
    assert r.status_code == 201, r.content


def test_contamination_check_against_a_test_set(api, base_model):
    train = upload(api, qa(20))
    process(train["id"])
    leaked = qa(20)[4:6] + qa(5, prefix="fresh")
    test = upload(api, leaked)
    process(test["id"])
    report = api.post(f"/api/v1/finetune/datasets/{train['id']}/contamination", {"against": test["id"]}, format="json").json()
    assert report["contaminated_records"] == 2
    assert sorted(i for p in report["exact"] for i in p["dataset"]) == [4, 5]


def test_validate_again_with_a_token_limit_lists_too_long_records(api, base_model):
    rows = qa(5) + [{"instruction": "long one", "output": "word " * 300}]
    d = upload(api, rows)
    process(d["id"])
    r = api.post(f"/api/v1/finetune/datasets/{d['id']}/validate", {"base_model": base_model.name, "max_tokens": 100}, format="json")
    assert r.status_code == 202 and r.json()["status"] == "uploading"
    dataset = process(d["id"])
    assert dataset.num_examples == 5
    errors = api.get(f"/api/v1/finetune/datasets/{d['id']}/validation-errors", {"category": "too_long"}).json()
    assert errors["count"] == 1 and errors["results"][0]["line"] == 6 and "maximum of 100" in errors["results"][0]["message"]
    assert errors["by_category"] == {"too_long": 1}


@pytest.mark.parametrize("fmt", ["alpaca", "sharegpt", "chatml", "completion"])
@pytest.mark.parametrize("file_type", ["jsonl", "json", "csv", "parquet"])
def test_download_in_every_format(api, base_model, fmt, file_type):
    d = upload(api, qa(3))
    process(d["id"])
    r = api.get(f"/api/v1/finetune/datasets/{d['id']}/download", {"format": fmt, "file_type": file_type})
    assert r.status_code == 200 and f"{fmt}.{file_type}" in r["Content-Disposition"]
    if file_type == "parquet":
        rows = pq.read_table(io.BytesIO(r.content)).to_pylist()
    elif file_type == "jsonl":
        rows = [json.loads(x) for x in r.content.decode().splitlines()]
    elif file_type == "json":
        rows = json.loads(r.content)
    else:
        rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert len(rows) == 3


def test_original_download_is_byte_for_byte(api, base_model):
    raw = b'{"instruction": "a", "output": "b"}\r\n'
    d = upload(api, raw=raw)
    assert api.get(f"/api/v1/finetune/datasets/{d['id']}/download", {"format": "original"}).content == raw


def test_convert_endpoint_turns_alpaca_csv_into_openai_messages(api):
    raw = b'instruction,input,output\n"Say ""hi""",,hello\nbroken row\n'
    r = api.post("/api/v1/finetune/datasets/convert",
                 {"file": alpaca_upload(raw=raw, name="x.csv"), "to_format": "chatml", "file_type": "jsonl"}, format="multipart")
    assert r.status_code == 200, r.content
    rows = [json.loads(x) for x in r.content.decode().splitlines()]
    assert rows == [{"messages": [{"role": "user", "content": 'Say "hi"'}, {"role": "assistant", "content": "hello"}]}]
    assert json.loads(r["X-Nexus-Report"])["invalid"] == 1


@pytest.mark.parametrize(
    "suffix",
    ["", "/preview", "/statistics", "/validation-errors", "/duplicates", "/download", "/events"],
)
def test_outsider_gets_404_on_every_dataset_endpoint(api, outsider_api, base_model, suffix):
    d = upload(api, qa(3))
    process(d["id"])
    assert api.get(f"/api/v1/finetune/datasets/{d['id']}{suffix}").status_code == 200
    assert outsider_api.get(f"/api/v1/finetune/datasets/{d['id']}{suffix}").status_code == 404


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("patch", "", {"name": "x"}), ("delete", "", None), ("post", "/validate", {}), ("post", "/split", {}),
     ("post", "/duplicates", {"action": "remove"}), ("post", "/contamination", {"against": 0})],
)
def test_outsider_gets_404_on_every_dataset_write(api, outsider_api, base_model, method, suffix, body):
    d = upload(api, qa(3))
    process(d["id"])
    r = getattr(outsider_api, method)(f"/api/v1/finetune/datasets/{d['id']}{suffix}", body, format="json")
    assert r.status_code == 404
    assert Dataset.objects.get(pk=d["id"]).name == "d.jsonl"


def test_optional_language_check_lists_records_in_another_language(api, base_model):
    rows = qa(4) + [{"instruction": "Erkläre bitte, wie das Wetter morgen in Berlin sein wird",
                     "output": "Morgen wird es in Berlin sonnig und warm, mit leichtem Wind aus Westen."}]
    rows[0] = {"instruction": "Explain how the weather works in simple terms", "output": "The sun heats the air and the air moves around."}
    d = upload(api, rows)
    process(d["id"])
    assert Dataset.objects.get(pk=d["id"]).num_examples == 5  # off by default
    api.post(f"/api/v1/finetune/datasets/{d['id']}/validate", {"languages": ["en"]}, format="json")
    dataset = process(d["id"])
    assert dataset.num_examples == 4
    errors = api.get(f"/api/v1/finetune/datasets/{d['id']}/validation-errors", {"category": "language"}).json()
    assert [e["line"] for e in errors["results"]] == [5] and "'de'" in errors["results"][0]["message"]


def test_removal_covers_every_cluster_even_beyond_the_displayed_ones(api, base_model):
    from datasets_app.engine.validate import MAX_LISTED_CLUSTERS

    rows = qa(MAX_LISTED_CLUSTERS + 100)
    d = upload(api, rows + rows)
    process(d["id"])
    dup = api.get(f"/api/v1/finetune/datasets/{d['id']}/duplicates").json()
    assert len(dup["exact"]) == MAX_LISTED_CLUSTERS and dup["summary"]["exact_clusters"] == MAX_LISTED_CLUSTERS + 100
    body = api.post(f"/api/v1/finetune/datasets/{d['id']}/duplicates", {"action": "remove"}, format="json").json()
    assert body["num_usable"] == MAX_LISTED_CLUSTERS + 100


def test_split_keeps_same_prompt_records_together_and_checks_itself_and_a_test_set(api, base_model):
    d = upload(api, with_duplicates() + qa(57, prefix="extra"))
    process(d["id"])
    test_set = upload(api, qa(40)[10:12])
    process(test_set["id"])
    splits = api.post(f"/api/v1/finetune/datasets/{d['id']}/split", {"against": test_set["id"]}, format="json").json()["results"]
    where = {}
    for s in splits:
        for r in api.get(f"/api/v1/finetune/datasets/{s['id']}/preview", {"limit": 200}).json()["results"]:
            where[r["source_index"]] = s["split"]
        checks = s["statistics"]["contamination"]
        assert all(checks[str(o["id"])] == 0 for o in splits if o["id"] != s["id"])
        assert s["statistics"]["response_tokens"] > 0
    assert where[7] == where[42]  # same prompt, different answers: one side
    leaked = sum(s["statistics"]["contamination"][str(test_set["id"])] for s in splits)
    assert leaked == 2  # records 10 and 11 are in the test set


def test_viewer_cannot_change_a_dataset(api, user, base_model):
    from nexus.models import Membership
    from nexus.teams import team_member_add
    from tests.conftest import api_client_for
    from tests.factories import make_user, personal_team

    d = upload(api, qa(5))
    process(d["id"])
    viewer = make_user("val")
    team_member_add(team=personal_team(user), user=viewer, role=Membership.Role.VIEWER)
    client = api_client_for(viewer)
    assert client.get(f"/api/v1/finetune/datasets/{d['id']}/preview").status_code == 200
    for method, suffix, body in [("patch", "", {"name": "x"}), ("delete", "", None), ("post", "/validate", {}),
                                 ("post", "/split", {}), ("post", "/duplicates", {"action": "remove"})]:
        assert getattr(client, method)(f"/api/v1/finetune/datasets/{d['id']}{suffix}", body, format="json").status_code == 403
    from django.test import Client

    page = Client()
    page.force_login(viewer)
    assert page.post(f"/finetune/datasets/{d['id']}/split/").status_code == 403
    assert Dataset.objects.filter(parent_id=d["id"]).count() == 0


def test_outsider_gets_404_on_dataset_pages_and_actions(api, outsider, base_model):
    from django.test import Client

    d = upload(api, qa(5))
    process(d["id"])
    page = Client()
    page.force_login(outsider)
    assert page.get(f"/finetune/datasets/{d['id']}/preview/").status_code == 404
    for action in ("split", "delete", "remove-duplicates", "validate"):
        assert page.post(f"/finetune/datasets/{d['id']}/{action}/").status_code == 404
    assert Dataset.objects.filter(pk=d["id"]).exists()


def test_openai_tool_definitions_travel_with_the_conversation(api, base_model):
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    row = {"tools": tools, "messages": [{"role": "user", "content": "add 2 and 2 please"}, {"role": "assistant", "content": "4"}]}
    d = upload(api, [row])
    process(d["id"])
    out = json.loads(api.get(f"/api/v1/finetune/datasets/{d['id']}/download", {"format": "chatml"}).content)
    assert out["tools"] == tools
    r = api.get(f"/api/v1/finetune/datasets/{d['id']}/download", {"format": "alpaca"})
    assert "tool definitions" in r["X-Nexus-Lossy"]


def test_contamination_check_from_the_page(api, user, base_model):
    from django.test import Client

    a = upload(api, qa(6))
    process(a["id"])
    b = upload(api, qa(6)[:2])
    process(b["id"])
    page = Client()
    page.force_login(user)
    r = page.post(f"/finetune/datasets/{a['id']}/contamination/", {"against": b["id"]}, follow=True)
    assert "2 record(s)" in r.content.decode()
