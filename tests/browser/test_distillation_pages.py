"""A distillation in a real browser against the real ASGI server and Celery worker, with a fake
OpenAI-compatible teacher served from this process: fill the form (test the connection, write a
template and watch its preview, see the estimate), start the job, watch its counts move live,
review (filter the rejected, reject an accepted answer by hand) and approve into a dataset.

Set NEXUS_SCREENSHOTS=<folder> to keep a screenshot of each page."""
from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - the fixture
from tests.datasets_app.distillation.conftest import KEY, varied_answer
from tests.factories import make_user
from tests.fakes.teachers import FakeTeacher

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def tess(db):
    return make_user("tess", password="tess-password-1")


def _shot(page, name: str) -> None:
    folder = os.environ.get("NEXUS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)
        # a full-page shot resizes the viewport and back; let the layout settle before the next click
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)


def test_a_distillation_from_the_form_to_a_dataset(celery_worker_process, asgi_server, tess, browser_page):  # noqa: F811
    from django.db import connections

    from datasets_app.distillation.models import DistillationJob

    page = browser_page
    page.set_default_timeout(30_000)
    # The first answer waits until the job page is following the job, so every count after it
    # arrives over the websocket; the 4th is slow, so the page sees the bar part-way; the 2nd refuses.
    page_live = threading.Event()

    def script(record: dict) -> str | tuple[str, float]:
        if record["n"] == 1:
            page_live.wait(60)
        return {2: "refusal", 4: ("slow", 2.5)}.get(record["n"], "ok")

    with FakeTeacher(api_key=KEY, models=["gpt-4o-mini"], latency_s=0.2, responder=varied_answer,
                     script=script) as fake:
        try:
            page.goto(f"{asgi_server}/finetune/distillation/new/")
            log_in(page, "tess", "tess-password-1")
            page.wait_for_url("**/finetune/distillation/new/")
            page.fill("input[name=name]", "tips from the browser")
            page.select_option("select[name=provider]", "openai")
            page.fill("input[name=model]", "gpt-4o-mini")
            page.fill("input[name=base_url]", fake.openai_base_url)
            page.fill("input[name=api_key]", KEY)
            page.click("#test-teacher")
            check = page.wait_for_selector("#teacher-check .check.ok")
            assert "Connected: model gpt-4o-mini" in check.inner_text()
            # a deployed model needs no key or address: its fields give way to the deployment's
            page.select_option("select[name=provider]", "deployed")
            assert page.is_visible("select[name=deployment]") and page.is_hidden("input[name=api_key]")
            page.select_option("select[name=provider]", "openai")
            assert page.is_hidden("select[name=deployment]") and page.is_visible("input[name=api_key]")

            page.check("input[name=source][value=template]")
            assert page.is_hidden("textarea[name=prompts]") and page.is_visible("textarea[name=template_prompt]")
            page.fill("textarea[name=template_prompt]", "Give a {tone} tip about {topic}.")
            page.fill("textarea[name=template_variables]", "tone: short | friendly\ntopic: tea | rain | maps | bread")
            page.wait_for_selector("#template-combinations:text-is('8')")
            assert page.inner_text("#template-sample").splitlines()[-1].startswith("Give a ")
            # a broken placeholder is named in place, and mending it brings the preview back
            page.fill("textarea[name=template_prompt]", "Give a {tone tip about {topic}.")
            assert "never closed" in page.wait_for_selector("#template-error").inner_text()
            page.fill("textarea[name=template_prompt]", "Give a {tone} tip about {topic}.")
            page.wait_for_selector("#template-combinations:text-is('8')")

            page.fill("input[name=num_examples]", "8")
            page.fill("input[name=batch_size]", "1")
            page.fill("input[name=rate_limit]", "600")
            page.wait_for_selector("#estimate-requests:text-is('8')")
            assert page.inner_text("#estimate-expected").startswith("$")
            # a second teacher: the best-of choice and the judge appear, and the estimate prices both
            assert page.is_hidden("#teacher-block-2") and page.is_hidden("#multi-teacher")
            page.click("#add-teacher")
            assert page.is_visible("#multi-teacher") and page.is_visible("select[name=judge]")
            page.select_option("select[name=t2_provider]", "anthropic")
            page.fill("input[name=t2_model]", "claude-haiku-4-5")
            page.fill("input[name=t2_base_url]", fake.anthropic_base_url)
            page.fill("input[name=t2_api_key]", KEY)
            page.wait_for_selector("#estimate-teachers tr[data-role=teacher] >> nth=1")
            rows = [r.inner_text() for r in page.query_selector_all("#estimate-teachers tbody tr")]
            assert [r.split("\t")[0].strip() for r in rows] == \
                ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "openai:gpt-4o-mini judge"], rows
            _shot(page, "distillation-new-two-teachers")
            page.click("#teacher-block-2 .remove-teacher")
            assert page.is_hidden("#teacher-block-2") and page.is_hidden("#multi-teacher")
            page.wait_for_function("document.querySelectorAll('#estimate-teachers tbody tr').length === 1")
            _shot(page, "distillation-new")
            assert KEY not in page.content()

            page.click("#start-distillation")
            page.wait_for_url(re.compile(r".*/finetune/distillation/\d+/$"))
            page.wait_for_selector("#ws-state[data-state=live]")
            job = DistillationJob.objects.get(name="tips from the browser")
            assert job.num_items == 8 and job.teachers.get().key_last4 == KEY[-4:]
            # watch the bar (without reloading: the marker survives only on the same document)
            page.evaluate("""() => { window.sameDocument = true; window.seenPercents = new Set();
                setInterval(() => { const p = document.getElementById('distill-percent');
                                    if (p) window.seenPercents.add(p.textContent.trim()); }, 50); }""")
            page_live.set()
            page.wait_for_selector("#distill-badge.completed", timeout=60_000)
            page.wait_for_selector("#ws-state[data-state=closed]")
            page.wait_for_selector("#distill-percent:text-is('100%')")
            seen = page.evaluate("[...window.seenPercents]")
            assert any(p not in ("0%", "100%") for p in seen), seen
            assert page.evaluate("window.sameDocument === true && window.nexusDistillMetrics") >= 1
            assert page.eval_on_selector("#distill-progress", "el => el.value") == 100
            assert page.inner_text("#distill-status [data-count=accepted]") == "7"
            assert page.inner_text("#distill-status [data-count=rejected]") == "1"
            assert page.inner_text("#distill-reasons [data-reason=refusal] .reason-count") == "1"
            assert page.eval_on_selector("[data-split=accepted]", "el => parseFloat(el.style.width)") > 80
            assert page.inner_text("#distill-log").count("Completed: 7 accepted, 1 rejected") == 1
            _shot(page, "distillation-job")

            page.click("#review-filters [data-filter=rejected]")
            page.wait_for_selector("#review-filters [data-filter=rejected].current")
            rows = page.query_selector_all("#review tbody tr[data-item]")
            assert len(rows) == 1 and rows[0].query_selector("[data-reason=refusal]")

            page.click("#review-filters [data-filter=accepted]")
            page.wait_for_selector("#review-filters [data-filter=accepted].current")
            first = page.query_selector("#review tbody tr[data-item]")
            item_id = first.get_attribute("data-item")
            first.query_selector(".reject-button").click()
            page.wait_for_selector(f"#item-{item_id}[data-status=rejected]")
            assert "by hand" in page.inner_text(f"#item-{item_id}")
            page.wait_for_selector("#distill-status [data-count=rejected]:text-is('2')")
            assert page.inner_text("#approve-button") == "Approve 6 accepted items"

            page.fill("#approve-name", "tips dataset")
            page.click("#approve-button")
            page.wait_for_url("**/finetune/datasets/*/")
            job.refresh_from_db()
            assert page.url.endswith(f"/finetune/datasets/{job.dataset_id}/")
            page.wait_for_selector("#dataset-status .badge.ready", timeout=60_000)
            assert "6 valid" in page.inner_text("#dataset-status")

            page.goto(f"{asgi_server}/finetune/distillation/")
            row = page.inner_text(f"#distillation-jobs tr[data-job='{job.pk}']")
            assert "tips from the browser" in row and "completed" in row and "6 / 2" in row
            assert page.query_selector(f"#distillation-jobs tr[data-job='{job.pk}'] a[href$='/datasets/{job.dataset_id}/']")
            # save the teacher for later jobs and test it from the list
            page.fill("#connection-form input[name=name]", "fake openai")
            page.fill("#connection-form input[name=model]", "gpt-4o-mini")
            page.fill("#connection-form input[name=base_url]", fake.openai_base_url)
            page.fill("#connection-form input[name=api_key]", KEY)
            page.click("#save-connection")
            page.wait_for_selector("#teacher-connections tr[data-connection] code.key")
            assert page.inner_text("#teacher-connections code.key") == f"••••{KEY[-4:]}"
            page.click("#teacher-connections .test-connection")
            assert "Connected" in page.wait_for_selector("#teacher-connections .check-result .check.ok").inner_text()
            assert KEY not in page.content()
            _shot(page, "distillation-list")
        finally:
            page_live.set()
            connections.close_all()
