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


def test_the_dataset_page_follows_processing_over_the_websocket(celery_worker_process, asgi_server, base_model, carol,
                                                                browser_page, monkeypatch):  # noqa: F811
    """The page of a dataset waiting to be processed listens on ws/finetune/dataset/<id>/ (no
    polling): the worker's events arrive there and the page turns ready by itself."""
    from django.db import transaction

    from datasets_app import services
    from datasets_app.jobs import DATASET
    from nexus.jobs import enqueue
    from tests.factories import alpaca_upload, personal_team, pirate_records

    monkeypatch.setattr(services, "enqueue", lambda *a, **kw: None)  # held back until the page listens
    dataset = services.dataset_create(team=personal_team(carol), user=carol, name="live", file=alpaca_upload(pirate_records(6)))
    page = browser_page
    page.set_default_timeout(30_000)
    frames, sockets, requests = [], [], []
    page.on("websocket", lambda ws: (sockets.append(ws.url), ws.on("framereceived", lambda payload: frames.append(payload))))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{asgi_server}/accounts/login/")
    log_in(page, "carol", "carol-password-1")
    page.goto(f"{asgi_server}/finetune/datasets/{dataset.pk}/")
    assert page.inner_text("#dataset-status-badge") == "uploading"
    page.wait_for_function("() => document.querySelector('#dataset-status').dataset.liveActive === '1'")
    page.wait_for_timeout(2500)  # were the page polling, it would ask for itself meanwhile
    assert sum(u.endswith(f"/finetune/datasets/{dataset.pk}/") for u in requests) == 1
    with transaction.atomic():
        enqueue(DATASET, dataset.pk)
    page.wait_for_selector("#dataset-status-badge.ready", timeout=120_000)
    page.wait_for_selector("#preview")
    assert any(u.endswith(f"/ws/finetune/dataset/{dataset.pk}/?after=0") for u in sockets)
    events = [json.loads(f) for f in frames if isinstance(f, str)]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses[-2:] == ["processing", "ready"], statuses
    assert any("progress" in e["data"] for e in events)
