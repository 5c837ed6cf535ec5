"""The evaluation pages in a real browser against the real ASGI server: a blind session rated
entirely by keyboard until its results reveal who wrote what; stars clicked on the session page
stored in model terms; a running session's bar and comparisons following the run live. The
comparisons are made in the database with known answers (no llama.cpp here)."""
from __future__ import annotations

import threading

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - the fixture
from tests.evaluation_app.test_pages import ANSWERS, make_adapter, make_session, model_response
from tests.factories import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def rita(db):
    # made before Playwright starts (its greenlets must not open database connections)
    return make_user("rita", password="rita-password-1")


@pytest.fixture
def adapter(rita):
    return make_adapter(rita)


@pytest.fixture
def blind_session(rita, adapter):
    # A is the base model in the first and third comparison, the fine-tuned one in the second
    return make_session(rita, adapter, blind=True, a_is_base=[True, False, True])


def _open(page, url: str) -> None:
    """Go to `url` through the login form (the browser starts without a session)."""
    page.set_default_timeout(15_000)
    page.goto(url)
    log_in(page, "rita", "rita-password-1")
    page.wait_for_url(url)


def _from_another_thread(work) -> None:  # noqa: ANN001
    """Run `work` (it records job events) on a thread of its own: Playwright keeps an event loop in
    this one, where pushing an event to the websocket group could not run."""
    from django.db import connection

    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


def test_a_blind_session_rated_by_keyboard_reveals_its_results(asgi_server, rita, blind_session,
                                                               browser_page):  # noqa: F811
    from django.db import connections

    from evaluation_app.models import ComparisonRating

    session = blind_session
    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/sessions/{session.pk}/rate/")
        assert "Response A" in page.text_content("#rate-flow") and "support-bot" not in page.content()
        # 3: B (fine-tuned) is better; 1: A (fine-tuned) is better; 2: a tie
        for n, key in enumerate(("3", "1", "2")):
            page.wait_for_selector(f"#rate-count:text-is('{n} of 3 rated')")
            assert ANSWERS[n][0] in page.inner_text("#rate-flow .prompt-text")
            page.keyboard.press(key)
            chosen = {"1": "A", "2": "tie", "3": "B"}[key]
            assert page.is_checked(f"#rate-flow input[name=preferred][value={chosen}]")
            page.keyboard.press("Enter")
        page.wait_for_selector("#rate-count:text-is('3 of 3 rated')")
        assert "You have rated every comparison" in page.inner_text("#rate-done")
        page.click("#results-link")
        page.wait_for_url(f"**/finetune/evaluation/sessions/{session.pk}/results/")
        counts = page.eval_on_selector_all("#preference-chart g.bar-row",
                                           "rows => Object.fromEntries(rows.map(r => [r.dataset.key, r.dataset.count]))")
        assert counts == {"base": "0", "tie": "1", "finetuned": "2"}
        assert page.locator("#preference-chart g.whisker").count() == 3
        assert page.locator("#preference-chart rect.bar-finetuned").count() == 1
        assert "n = 3 ratings" in page.inner_text("#preference-counts")
        assert "support-bot" in page.inner_text("#results-progress")  # revealed: the models are named
        assert sorted(ComparisonRating.objects.filter(rater=rita).values_list("preferred", flat=True)) == \
            ["finetuned", "finetuned", "tie"]
    finally:
        connections.close_all()


@pytest.fixture
def open_session(rita, adapter):
    return make_session(rita, adapter)  # not blind: A is the base model


def test_stars_clicked_on_the_session_page_are_stored_in_model_terms(asgi_server, rita, open_session,
                                                                     browser_page):  # noqa: F811
    from django.db import connections

    from evaluation_app.models import ComparisonRating

    session = open_session
    cid = session.comparisons.get(index=1).pk
    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/sessions/{session.pk}/")
        block = f"#comparison-{cid}"
        assert page.text_content(f"{block} [data-side=A] h3") == "Base model"
        assert "tok/s" in page.inner_text(f"{block} [data-side=B] .response-meta")
        for side, criterion, stars in (("A", "relevance", 4), ("B", "relevance", 5), ("B", "helpfulness", 3)):
            page.click(f"label[for=c{cid}-{side}-{criterion}-{stars}]")
        page.click(f"label[for=c{cid}-pref-B]")
        page.fill(f"{block} textarea[name=reason]", "names the menu path")
        page.click(f"{block} .submit-rating")
        page.wait_for_selector(f"{block} .rating-saved")
        assert page.is_checked(f"#c{cid}-B-relevance-5") and page.is_checked(f"#c{cid}-pref-B")
        rating = ComparisonRating.objects.get(comparison_id=cid, rater=rita)
        assert rating.preferred == "finetuned" and rating.reason == "names the menu path"
        assert rating.ratings == {"base": {"relevance": 4}, "finetuned": {"relevance": 5, "helpfulness": 3}}
    finally:
        connections.close_all()


@pytest.fixture
def running_session(rita, adapter):
    return make_session(rita, adapter, done=0, status="running")


def test_a_running_sessions_bar_and_comparisons_follow_the_run(asgi_server, rita, adapter, running_session,
                                                               browser_page):  # noqa: F811
    from django.db import connections

    from evaluation_app.jobs import COMPARISON
    from evaluation_app.models import PromptComparison
    from nexus.jobs import event, transition

    session = running_session
    first = session.comparisons.get(index=0)
    page = browser_page
    try:
        _open(page, f"{asgi_server}/finetune/evaluation/sessions/{session.pk}/")
        page.wait_for_selector("#ws-state[data-state=live]")
        assert page.eval_on_selector("#session-progress", "el => el.value") == 0
        assert page.get_attribute(f"#comparison-{first.pk}", "data-status") == "pending"
        page.evaluate("window.sameDocument = true")

        def first_finished() -> None:
            PromptComparison.objects.filter(pk=first.pk).update(
                status="done", base_response=model_response("base", ANSWERS[0][1], adapter),
                finetuned_response=model_response("finetuned", ANSWERS[0][2], adapter))
            event(COMPARISON, session.pk, "1 of 3 compared", level="debug", type="metric",
                  data={"progress": 1 / 3, "done": 1, "total": 3, "comparison_id": first.pk, "index": 0, "ok": True})

        _from_another_thread(first_finished)
        page.wait_for_selector("#session-percent:text-is('33%')")
        assert page.eval_on_selector("#session-progress", "el => el.value") == 33
        assert page.inner_text("#session-done") == "1"
        page.wait_for_selector(f"#comparison-{first.pk}[data-status=done]")
        assert ANSWERS[0][1] in page.inner_text(f"#comparison-{first.pk} [data-side=A] .response-text")
        assert page.is_visible(f"label[for=c{first.pk}-pref-B]")  # it can be rated at once

        _from_another_thread(lambda: transition(COMPARISON, session.pk, to="cancelled", frm=["running"],
                                                message="Cancelled with 2 prompts not compared"))
        page.wait_for_selector("#session-badge.cancelled")
        page.wait_for_selector("#ws-state[data-state=closed]", state="attached")
        assert page.evaluate("window.sameDocument === true")
        assert page.is_visible("#run-session")
    finally:
        connections.close_all()
