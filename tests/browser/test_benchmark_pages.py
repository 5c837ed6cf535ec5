"""The benchmark pages in a real browser against the real ASGI server: the runner's suites, its
estimate following the typed sample counts and a refusal shown by its suite; a completed job's
results (table, chart, categories, "no change" inside an interval); a running job followed live;
the custom test set editor; the summary's recommendation. Results are rows made with the shape
the runner stores (no lm-eval run here)."""
from __future__ import annotations

import pytest

from tests.browser.test_evaluation_pages import _from_another_thread, _open, rita  # noqa: F401 - a fixture
from tests.browser.test_job_page import browser_page  # noqa: F401 - the fixture
from tests.evaluation_app.test_benchmark_pages import _result, bench_adapter, completed_job

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def adapter(rita):
    return bench_adapter(rita)


@pytest.fixture
def job(rita, adapter):
    return completed_job(rita, adapter)


@pytest.fixture
def missing_suite(db):
    """A suite whose data is not on this machine (the imported ones are not, in tests)."""
    from evaluation_app.benchmarks.services import data_dir
    from evaluation_app.engine import suites

    missing = [s for s in suites.suites() if not suites.installed(s, data_dir())]
    if not missing:
        pytest.fail("every suite is installed in the test data folder; this test needs one that is not")
    return missing[0]


def test_the_runner_shows_suites_estimates_as_samples_are_typed_and_refuses_by_the_suite(
        asgi_server, rita, adapter, job, missing_suite, browser_page):  # noqa: F811
    from django.db import connections

    from evaluation_app.models import BenchmarkJob

    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/benchmarks/new/?adapter={adapter.pk}")
        mmlu = "#suites tr[data-suite=mmlu]"
        assert page.is_enabled(f"{mmlu} input[name=suite]") and "14042" in page.inner_text(mmlu)
        absent = f"#suites tr[data-suite={missing_suite.name}]"
        assert page.is_disabled(f"{absent} input[name=suite]")
        assert "data not installed" in page.inner_text(absent)
        assert f"nexus_import_benchmark {missing_suite.name}" in page.inner_text(f"{absent} code.install")
        assert "no run measured here yet" in page.inner_text("#suites tr[data-suite=gsm8k] .suite-estimate")

        page.check(f"{mmlu} input[name=suite]")
        full = page.inner_text("#benchmark-estimate")
        assert "Estimated: about" in full and "1 benchmark" in full
        assert "14042 items × 2 models" in page.inner_text(f"{mmlu} .suite-estimate")
        page.fill(f"{mmlu} input.samples", "100")  # 0.33 s x 100 items x 2 models: about 1 min
        page.wait_for_function("!document.getElementById('benchmark-estimate').textContent.includes('h of')")
        assert page.inner_text("#benchmark-estimate") != full
        assert "100 items × 2 models" in page.inner_text(f"{mmlu} .suite-estimate")
        page.check("#suites tr[data-suite=gsm8k] input[name=suite]")
        assert "GSM8K: no run measured here yet" in page.inner_text("#benchmark-estimate")
        page.select_option("select[name=adapter]", "")
        assert "100 items × 1 model)" in page.inner_text(f"{mmlu} .suite-estimate")
        page.select_option("select[name=adapter]", str(adapter.pk))

        page.fill(f"{mmlu} input.samples", "999999")
        page.click("#start-benchmark")
        page.wait_for_selector(f"{mmlu} .suite-error")
        assert "14,042 items" in page.inner_text(f"{mmlu} .suite-error")
        assert page.input_value(f"{mmlu} input.samples") == "999999" and page.is_checked(f"{mmlu} input[name=suite]")
        assert BenchmarkJob.objects.count() == 1  # only the completed one
    finally:
        connections.close_all()


def test_a_completed_jobs_results_page(asgi_server, rita, job, browser_page):  # noqa: F811
    from django.db import connections

    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/benchmarks/{job.pk}/")
        assert page.inner_text("h1") == "Benchmark Results: support-bot"
        assert page.inner_text("#base-average") == "47.5%" and page.inner_text("#finetuned-average") == "67.5%"
        mmlu = page.inner_text("#benchmark-table tr[data-benchmark=mmlu] .change-cell")
        assert "no change" in mmlu and "▲" not in mmlu and "improved" not in mmlu
        assert "improved" in page.inner_text('#benchmark-table tr[data-benchmark="custom:1"] .change-cell')
        assert page.locator("#benchmark-chart g.bar-row").count() == 4
        assert page.locator("#benchmark-chart rect.bar-finetuned").count() == 2
        assert "no change, 95% CI -10.0 to +20.0" in page.text_content("#benchmark-chart")
        anatomy = page.locator("details.categories[data-benchmark=mmlu] tr[data-category=anatomy]")
        assert anatomy.is_visible() and "50.0%" in anatomy.inner_text() and "no change" in anatomy.inner_text()
        assert page.inner_text("#recommendation") == "Deploy"
        page.click("details.categories[data-benchmark=mmlu] a.items-link")
        page.wait_for_url(f"**/benchmarks/{job.pk}/items/mmlu/")
        assert page.locator("#benchmark-items tr.differs").count() == 2
    finally:
        connections.close_all()


@pytest.fixture
def running_job(rita, adapter):
    from evaluation_app.jobs import BENCHMARK
    from evaluation_app.models import BenchmarkJob
    from nexus.jobs import event

    job = BenchmarkJob.objects.create(team=adapter.team, created_by=rita, name="running", adapter=adapter,
                                      base_model=adapter.base_model, status="running", lm_eval_version="0.4.13",
                                      benchmarks=[{"benchmark_name": "mmlu", "num_samples": 40, "num_few_shot": 5,
                                                   "max_tokens": 256, "temperature": 0.0}])
    event(BENCHMARK, job.pk, "Started on gpu-test@host")
    return job


def test_a_running_job_follows_its_events_and_shows_each_benchmark_as_it_finishes(
        asgi_server, rita, running_job, browser_page):  # noqa: F811
    from django.db import connections

    from evaluation_app.jobs import BENCHMARK
    from nexus.jobs import event, transition

    job = running_job
    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/benchmarks/{job.pk}/")
        page.wait_for_function("(window.nexusLiveEvents || []).length >= 1")  # the backlog: connected
        assert page.is_visible("#cancel-benchmark") and "No benchmark has finished yet" in page.inner_text(
            "#benchmark-table")
        page.evaluate("window.sameDocument = true")
        _from_another_thread(lambda: event(BENCHMARK, job.pk, "MMLU: fine-tuned model, 40 items", level="debug",
                                           type="metric", data={"progress": 0.5, "done": 1, "total": 2,
                                                                "benchmark": "mmlu", "side": "finetuned"}))
        page.wait_for_selector("#benchmark-current:text-is('MMLU: fine-tuned model, 40 items')")
        assert page.eval_on_selector("#benchmark-progress", "el => el.value") == 50

        def finished() -> None:
            row = _result(job, 0, "mmlu", "MMLU", categories={"anatomy": (40, 20, 22)}, interval=(-10.0, 20.0),
                          change="no_change")
            event(BENCHMARK, job.pk, "MMLU: base 50.0%, fine-tuned 55.0%", data={"benchmark": "mmlu",
                                                                                  "result": row.pk})

        _from_another_thread(finished)
        page.wait_for_selector("#benchmark-table tr[data-benchmark=mmlu]")
        assert "no change" in page.inner_text("#benchmark-table tr[data-benchmark=mmlu]")
        _from_another_thread(lambda: transition(BENCHMARK, job.pk, to="completed", frm=["running"],
                                                message="Completed", progress=1.0))
        page.wait_for_selector("#benchmark-badge.completed")
        assert not page.is_visible("#cancel-benchmark") and page.evaluate("window.sameDocument === true")
    finally:
        connections.close_all()


def test_the_custom_set_editor_names_a_bad_case_and_makes_a_good_set(asgi_server, rita, browser_page):  # noqa: F811
    import json

    from django.db import connections

    from evaluation_app.benchmarks.forms import DESIGN_CASES
    from evaluation_app.models import CustomBenchmark

    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/benchmarks/custom/")
        assert "order lookup" in page.input_value("textarea[name=test_cases]")
        bad = [*DESIGN_CASES, {"id": "cs_004", "prompt": "Anything else?", "evaluation_type": "element_check",
                               "expected_elements": "apologize"}]
        page.fill("#custom-form input[name=name]", "support-eval")
        page.fill("textarea[name=test_cases]", json.dumps(bad, indent=2))
        page.click("#create-custom")
        page.wait_for_selector("#custom-form label.invalid .error")
        error = page.inner_text("#custom-form label.invalid .error")
        assert "test_cases[3] (id 'cs_004').expected_elements" in error, error
        assert "cs_004" in page.input_value("textarea[name=test_cases]")  # what was typed stays
        page.fill("textarea[name=test_cases]", json.dumps(DESIGN_CASES, indent=2))
        page.click("#create-custom")
        page.wait_for_url("**/finetune/evaluation/benchmarks/custom/*/")
        custom = CustomBenchmark.objects.get(name="support-eval")
        assert page.locator("table.cases-table").count() == 3
        assert "order lookup" in page.inner_text('table[data-type=element_check] tr[data-case=cs_001]')
        assert custom.scoring["similarity"] == {"weight": 0.3, "threshold": 0.8}
    finally:
        connections.close_all()


def test_the_summary_shows_the_recommendation_badge(asgi_server, rita, adapter, job, browser_page):  # noqa: F811
    from django.db import connections

    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/adapters/{adapter.pk}/")
        page.click("#evaluation-summary")
        page.wait_for_url(f"**/finetune/evaluation/summary/{adapter.pk}/")
        badge = page.locator("#recommendation")
        assert badge.inner_text() == "Deploy" and "deploy" in badge.get_attribute("class")
        assert page.evaluate("getComputedStyle(document.getElementById('recommendation')).fontSize") == "22px"
        assert "Custom: Support: +35.0 points" in page.inner_text("#key-improvements")
        assert page.locator("#benchmark-chart").count() == 1
        page.click("#summary-run-benchmark")
        page.wait_for_url(f"**/benchmarks/new/?adapter={adapter.pk}")
        assert page.input_value("select[name=adapter]") == str(adapter.pk)
    finally:
        connections.close_all()
