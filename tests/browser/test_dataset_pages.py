"""The dataset pages in headless Chromium against the real server and worker."""
from __future__ import annotations

import json

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - shared fixture
from tests.factories import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def carol(db):
    return make_user("carol", password="carol-password-1")


def test_dataset_page_shows_problems_duplicates_and_a_paged_preview(celery_worker_process, asgi_server, base_model, carol,
                                                                    browser_page, tmp_path):  # noqa: F811
    rows = [{"instruction": f"Explain idea {i} to a child", "output": f"Idea {i} is like a toy that does {i} things."} for i in range(24)]
    lines = [json.dumps(r) for r in rows] + [json.dumps(rows[3]), '{"instruction": "broken', json.dumps({"instruction": "no output"})]
    data = tmp_path / "ideas.jsonl"
    data.write_text("\n".join(lines) + "\n")
    page = browser_page
    page.set_default_timeout(30_000)
    page.goto(f"{asgi_server}/accounts/login/")
    log_in(page, "carol", "carol-password-1")

    page.goto(f"{asgi_server}/finetune/datasets/upload/")
    page.set_input_files("input[name=file]", str(data))
    assert "ideas.jsonl" in page.inner_text("#drop-name")
    page.click("main button[type=submit]")
    page.wait_for_url("**/finetune/datasets/*/")
    page.wait_for_selector("#dataset-status-badge.ready", timeout=120_000)
    page.wait_for_selector("#preview")  # the page reloaded with everything once processing finished

    status = page.inner_text("#dataset-status")
    assert "25 valid, 2 invalid" in status and "confidence" in status
    problems = page.inner_text("#dataset-status")
    assert "parse · 1" in problems and "schema · 1" in problems and "line 26" in problems
    assert "records 3, 24" in page.inner_text("#duplicate-clusters")
    page.wait_for_function("() => !!(window.Chart && Chart.getChart('token-histogram'))")

    assert "Records 1–10 of 25" in page.inner_text("#preview")
    page.click("#preview-next")
    page.wait_for_function("() => document.querySelector('#preview').innerText.includes('Records 11–20 of 25')")
    assert "Explain idea 10 to a child" in page.inner_text("#preview")

    page.click("text=Remove duplicates (keep one of each)")
    page.wait_for_selector("text=24 usable")
    page.click("text=Restore 1 removed")
    page.wait_for_selector("#dataset-status-badge.ready")
    assert "usable" not in page.inner_text("#dataset-status dl")
    assert "25 valid, 2 invalid" in page.inner_text("#dataset-status dl")
