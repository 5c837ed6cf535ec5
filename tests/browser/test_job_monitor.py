"""The job monitor in a real browser against the real server and worker: the controls (save a
checkpoint now, pause, resume, stop), the checkpoints table updating itself, and the validation
loss drawn beside the training loss."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - the fixture
from tests.conftest import api_client_for
from tests.e2e.test_finetune_e2e import upload_and_wait_ready
from tests.factories import make_user, pirate_records

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def carol_job(celery_worker_process, base_model):
    # made before Playwright starts (its greenlets must not open database connections)
    user = make_user("carol", password="carol-password-1")
    api = api_client_for(user)
    # through the running worker (a synchronous make_ready_dataset would race it for the claim)
    dataset = upload_and_wait_ready(api, pirate_records(16))
    r = api.post("/api/v1/finetune/jobs", {
        "name": "monitored", "base_model": base_model.name, "dataset_id": dataset["id"],
        "lora_config": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "training_config": {"max_steps": 400, "warmup_steps": 12, "batch_size": 4, "gradient_accumulation_steps": 1,
                            "learning_rate": 1e-3,
                            "max_seq_length": 96, "save_steps": 1000, "eval_steps": 4, "validation_split": 0.25,
                            "load_best_model_at_end": False}}, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_monitor_controls_checkpoints_and_validation_curve(celery_worker_process, asgi_server, carol_job,
                                                           browser_page):  # noqa: F811
    page = browser_page
    page.set_default_timeout(30_000)
    page.goto(f"{asgi_server}/accounts/login/")
    log_in(page, "carol", "carol-password-1")
    page.goto(f"{asgi_server}/finetune/training/{carol_job['id']}/")
    page.wait_for_selector("#ws-state[data-state=live]")
    points = "(i) => { const c = Chart.getChart('loss-chart'); return c ? c.data.datasets[i].data.length : 0; }"
    page.wait_for_function(f"() => ({points})(0) >= 2", timeout=240_000)
    assert page.inner_text("#job-status") in ("training", "evaluating")
    assert "No checkpoint yet" in page.inner_text("#job-checkpoints")

    page.click("#checkpoint-button")  # htmx: the summary comes back with the request noted
    page.wait_for_selector("#checkpoints tbody tr", timeout=60_000)  # the table reloads on the saved event
    assert "Checkpoint saved at step" in page.inner_text("#job-log")

    page.wait_for_function(f"() => ({points})(1) >= 1", timeout=120_000)  # validation loss drawn at step 4
    page.click("#pause-button")
    try:
        page.wait_for_selector("#job-status.paused", timeout=90_000)
    except Exception as exc:  # say where the job was instead of only "timeout"
        raise AssertionError(f"not paused: status {page.inner_text('#job-status')!r}, steps "
                             f"{page.inner_text('#job-steps')!r}, log tail {page.inner_text('#job-log')[-1500:]!r}") from exc
    page.wait_for_selector("#ws-state[data-state=closed]")
    paused_at = int(page.inner_text("#job-steps").split("/")[0])
    assert 2 <= paused_at < 400
    assert page.locator("#checkpoints tbody tr").count() == 2  # the pause saved one too

    page.click("#resume-button")  # the page follows the job again
    page.wait_for_selector("#ws-state[data-state=live]", timeout=60_000)
    page.wait_for_function("(n) => Chart.getChart('loss-chart').data.datasets[0].data.length > n", arg=paused_at,
                           timeout=120_000)
    assert page.inner_text("#job-status") in ("queued", "preparing", "training", "evaluating")
    page.wait_for_function(f"() => ({points})(1) >= 3", timeout=240_000)
    page.once("dialog", lambda dialog: dialog.accept())  # "Stop this job?"
    page.click("#stop-button")
    page.wait_for_selector("#job-status.cancelled", timeout=60_000)

    train = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[0].data.map(p => p.x)")
    evals = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[1].data.map(p => p.x)")
    assert train == list(range(1, len(train) + 1)), train  # resumed without gaps or repeats
    assert evals == [4 * (i + 1) for i in range(len(evals))] and len(evals) >= 3, evals
    assert page.inner_text("#job-eval-loss") != "–"
    Path("var/test-logs").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="var/test-logs/job-monitor.png", full_page=True)
