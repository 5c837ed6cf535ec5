"""A real browser (Debian's headless Chromium, driven by Playwright) against the real ASGI
server and Celery worker: upload a dataset, start a job from the wizard, watch it train live."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.factories import make_user, pirate_records

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser_page(monkeypatch):
    # Playwright's sync API keeps an event loop in this thread, which Django's async-safety check
    # mistakes for async code; the test's own ORM calls are plain synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is missing: scripts/setup.sh --browser installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        yield page
        browser.close()


def log_in(page, username: str, password: str) -> None:
    """Fill the login form the page shows (it redirected there, or was sent there)."""
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")


@pytest.fixture
def bob(db):
    # Made before Playwright starts: ORM calls from inside its greenlets would open a second
    # connection that outlives the test.
    return make_user("bob", password="bob-password-1")


def _wait_processed(page, worker) -> None:
    """The dataset's badge says ready; when it does not in time, say what the row and the worker
    were doing (a CI failure is read from its log alone)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    from datasets_app.models import Dataset

    try:
        page.wait_for_selector("#dataset-status .badge.ready, #dataset-status .badge.error", timeout=240_000)
    except PlaywrightTimeout:
        rows = list(Dataset.objects.values("pk", "status", "worker", "error_message", "created_at", "updated_at"))
        tail = worker.log.read_text()[-4000:] if worker.log.exists() else "(no worker log)"
        pytest.fail(f"the dataset was not processed in 240 s; rows: {rows}\npage: {page.inner_text('main')[:1500]}\n"
                    f"worker log:\n{tail}")
    assert page.is_visible("#dataset-status .badge.ready"), page.inner_text("#dataset-status")


def test_job_page_updates_live_while_the_job_trains(celery_worker_process, asgi_server, base_model, bob, browser_page,
                                                    tmp_path):
    import json

    data = tmp_path / "pirates.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in pirate_records(12)) + "\n")
    page = browser_page
    page.set_default_timeout(30_000)

    page.goto(f"{asgi_server}/finetune/training/")
    assert "/accounts/login/" in page.url
    log_in(page, "bob", "bob-password-1")

    page.goto(f"{asgi_server}/finetune/datasets/upload/")
    page.set_input_files("input[name=file]", str(data))
    page.fill("input[name=name]", "Pirates in the browser")
    page.click("main button[type=submit]")
    # the status partial polls with htmx until the worker has processed the file
    _wait_processed(page, celery_worker_process)
    assert "12 valid" in page.inner_text("#dataset-status")
    page.wait_for_function("() => !!(window.Chart && Chart.getChart('token-histogram'))")

    page.click("text=Fine-tune on this dataset")
    _walk_the_wizard(page)
    page.wait_for_url("**/finetune/training/*/")
    page.wait_for_selector("#ws-state[data-state=live]")
    assert page.inner_text("#job-status") in ("queued", "preparing", "training")

    points = "() => { const c = Chart.getChart('loss-chart'); return c ? c.data.datasets[0].data.length : 0; }"
    page.wait_for_function(f"() => ({points})() >= 3", timeout=240_000)
    assert page.inner_text("#job-status") == "training"  # seen live, not from a finished page
    progress_mid = float(page.get_attribute("#job-progress", "value"))
    assert 0 < progress_mid < 100

    # drop the websocket mid-run: the page reconnects and resumes after the last event it showed
    assert page.evaluate("() => window.nexusConnects") == 1
    page.evaluate("() => window.nexusJobSocket.close()")
    page.wait_for_function("() => window.nexusConnects === 2")  # reconnected with ?after=<last seq shown>
    page.wait_for_selector("#job-status.completed", timeout=240_000)
    page.wait_for_selector("#ws-state[data-state=closed]")

    steps = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[0].data.map(p => p.x)")
    assert steps == list(range(1, 15)), steps  # every step once: no gap, no duplicate
    seqs = page.eval_on_selector_all("#job-log span", "els => els.map(e => parseInt(e.dataset.seq))")
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    log = page.inner_text("#job-log")
    assert "Completed 14 steps" in log
    assert float(page.get_attribute("#job-progress", "value")) == 100
    losses = page.evaluate("() => Chart.getChart('loss-chart').data.datasets[0].data.map(p => p.y)")
    assert sum(losses[-3:]) < sum(losses[:3])
    Path("var/test-logs").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="var/test-logs/job-page.png", full_page=True)


def _walk_the_wizard(page) -> None:
    """The new-job wizard, one step at a time, with a screenshot of each into var/test-logs/."""
    import re

    shots = Path("var/test-logs")
    shots.mkdir(parents=True, exist_ok=True)

    def step(n: int) -> None:
        page.wait_for_selector(f"fieldset.wizard-step[data-step='{n}']:not([hidden])")
        assert page.locator("fieldset.wizard-step:not([hidden])").count() == 1
        assert page.get_attribute(".wizard-steps li[aria-current=step]", "data-step") == str(n)

    step(1)  # name and base model
    page.fill("input[name=name]", "browser-job")
    assert page.is_checked("input[name=base_model]")
    page.screenshot(path=str(shots / "wizard-1-base-model.png"), full_page=True)
    page.click("[data-wizard-next]")

    step(2)  # the dataset from the dataset page, with its first conversations
    page.wait_for_selector("#dataset-preview .conversation")
    assert page.locator("#dataset-preview .conversation").count() == 3
    assert "Pirates in the browser" in page.inner_text("#dataset-preview")
    page.screenshot(path=str(shots / "wizard-2-dataset.png"), full_page=True)
    page.click("[data-wizard-next]")

    step(3)  # a preset fills the LoRA fields; the estimate panel follows the form
    page.select_option("select[name=preset]", "quick-start")
    # the design's names, and appendix A's Quick Start values
    assert page.input_value("input[name=rank]") == "8" and page.input_value("input[name=alpha]") == "16"
    assert page.input_value("input[name=target_modules]") == "q_proj, v_proj"
    assert page.is_checked("input[name=qlora]")  # the design's default: QLoRA on
    page.fill("input[name=alpha]", "32")
    page.wait_for_function("() => /[0-9.]+ GiB/.test(document.querySelector('#estimate').innerText)")
    assert page.locator("#estimate .mem-bar span").count() == 12  # six parts (the heap slack is 0 on the GPU), on the GPU and on the CPU
    page.screenshot(path=str(shots / "wizard-3-lora.png"), full_page=True)
    page.click("[data-wizard-next]")

    step(4)  # training; the estimate now counts this run's steps
    for field, value in {"max_steps": "14", "batch_size": "2", "gradient_accumulation_steps": "1",
                         "learning_rate": "0.001", "max_seq_length": "96", "warmup_steps": "2"}.items():
        page.fill(f"input[name={field}]", value)
    page.press("input[name=max_seq_length]", "Tab")  # a change event, as leaving the field gives
    page.wait_for_function("() => / 14 (optimizer )?steps/.test(document.querySelector('#estimate').innerText)")
    assert re.search(r"[0-9.]+ GiB", page.inner_text("#estimate"))
    page.screenshot(path=str(shots / "wizard-4-training.png"), full_page=True)
    page.click("[data-wizard-next]")

    step(5)  # the server's review of the whole config, then start
    page.wait_for_selector("#review-config")
    assert page.inner_text("#review-config [data-key=learning_rate] td") == "0.001"
    assert page.inner_text("#review-config [data-key=max_steps] td") == "14"
    assert page.inner_text("#review-config [data-key=rank] td") == "8"
    assert page.inner_text("#review-config [data-key=alpha] td") == "32"
    assert page.inner_text("#review-config [data-key=warmup_steps] td") == "2"
    page.screenshot(path=str(shots / "wizard-5-review.png"), full_page=True)
    page.click("#start-training")
