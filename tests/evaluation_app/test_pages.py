"""The evaluation pages with Django's test client: the dashboard and its three forms, a session
(side by side, star ratings, run/cancel/delete, more prompts), the blind rating flow, results with
their charts, a judge run and a speed test; who may see and change what; and what a blind page
must not say before the session is revealed."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from adapters_app.models import LoRAAdapter
from evaluation_app.engine.judge import CRITERIA
from evaluation_app.models import ComparisonRating, ComparisonSession, JudgeEvaluation, JudgeRun, PerformanceTest
from evaluation_app.services import session_create
from nexus.models import BaseModel, Membership
from nexus.teams import team_member_add
from tests.factories import make_user, personal_team

pytestmark = pytest.mark.django_db

ADAPTER_NAME = "support-bot"
ANSWERS = [("My package is late. Order #789?", "Package delivery times can vary.", "I am sorry about order #789."),
           ("How do I reset my password?", "Use the reset link.", "Open Settings, then Security, then Reset."),
           ("Can I return a gift?", "Returns depend on the shop.", "Yes: within 30 days, with the gift receipt.")]


def _login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_adapter(user, name: str = ADAPTER_NAME) -> LoRAAdapter:
    """An adapter whose GGUF files are never opened: pages and sessions only check they are named."""
    base, _ = BaseModel.objects.get_or_create(name="tiny-base", defaults={"gguf_path": "/nowhere/tiny-base.gguf"})
    return LoRAAdapter.objects.create(team=personal_team(user), name=name, version=2, base_model=base,
                                      path=f"adapters/{name}", gguf_path=f"/nowhere/{name}.gguf")


def model_response(role: str, text: str, adapter: LoRAAdapter) -> dict:
    """The design's ModelResponse, as a run stores it."""
    finetuned = role == "finetuned"
    return {"model_id": f"adapter:{adapter.pk}" if finetuned else f"base:{adapter.base_model_id}",
            "model_name": f"tiny-base + {adapter.name} v{adapter.version}" if finetuned else "tiny-base",
            "is_finetuned": finetuned, "adapter_id": adapter.pk if finetuned else None, "response": text,
            "tokens_generated": 20 + len(text) // 4, "generation_time_ms": 1234.0 + len(text),
            "tokens_per_second": 31.5 if finetuned else 29.25, "finish_reason": "stop"}


def make_session(user, adapter: LoRAAdapter, *, blind: bool = False, answers=ANSWERS, done: int | None = None,
                 status: str = "completed", a_is_base: list[bool] | None = None, **body) -> ComparisonSession:
    """A session made by the service, its first `done` comparisons answered as a run would store them."""
    session = session_create(team=adapter.team, user=user, body={
        "name": "support check", "adapter_id": adapter.pk, "comparison_type": "blind" if blind else "batch",
        "test_prompts": [a[0] for a in answers], "system_prompt": "You are a helpful support agent.", **body})
    for i, comparison in enumerate(session.comparisons.order_by("index")):
        if a_is_base is not None:
            comparison.a_is_base = a_is_base[i]
        if done is None or i < done:
            comparison.status = "done"
            comparison.base_response = model_response("base", answers[i][1], adapter)
            comparison.finetuned_response = model_response("finetuned", answers[i][2], adapter)
        comparison.save()
    ComparisonSession.objects.filter(pk=session.pk).update(status=status, progress=1.0 if status == "completed" else 0.0)
    session.refresh_from_db()
    return session


def rate_all(session: ComparisonSession, user, preferred: str = "finetuned") -> None:
    for comparison in session.comparisons.filter(status="done"):
        ComparisonRating.objects.create(comparison=comparison, rater=user, preferred=preferred,
                                        ratings={"base": {"relevance": 3}, "finetuned": {"relevance": 5}})


def speed_metrics(tokens_per_s: float) -> dict:
    """A speed test's metrics as evaluation_app/engine/speed.py writes them."""
    from evaluation_app.engine.stats import spread

    def cell(length: int, batch: int) -> dict:
        tps = spread([tokens_per_s * f for f in (0.9, 1.0, 1.1)])
        return {"output_length": length, "batch_size": batch, "n": 3, "tokens_per_second": tps,
                "time_to_first_token_ms": spread([40.0, 50.0, 60.0]), "total_time_ms": spread([900.0, 1000.0, 1100.0]),
                "throughput_tokens_per_second": spread([tokens_per_s]), "completion_tokens": spread([64.0]),
                "prompt_cache_reuse": 0.5}
    cells = [cell(64, 1), cell(64, 4)]
    return {"cells": cells, "overall": {k: v for k, v in cells[0].items() if k not in ("output_length", "batch_size")},
            "peak_memory_mb": 512.0, "peak_memory_note": "VmHWM of process 42", "requests": [], "server": {}}


@pytest.fixture
def adapter(user):
    return make_adapter(user)


@pytest.fixture
def session(user, adapter):
    return make_session(user, adapter)


@pytest.fixture
def judge(user, session):
    run = JudgeRun.objects.create(team=session.team, created_by=user, session=session, provider="openai",
                                  model="gpt-4o-mini", status="completed", progress=1.0,
                                  evaluation_criteria=list(CRITERIA))
    for i, comparison in enumerate(session.comparisons.all()):
        JudgeEvaluation.objects.create(run=run, comparison=comparison, status="done",
                                       judge_verdict="finetuned" if i else "tie", judge_reasoning=f"reason {i}",
                                       confidence=0.8, consistent=bool(i), orders=[{"consistent": bool(i)}],
                                       criteria_scores={"base": {"accuracy": 3}, "finetuned": {"accuracy": 4}})
    return run


@pytest.fixture
def speed_test(user, adapter):
    from evaluation_app.engine.speed import compare

    base, finetuned = speed_metrics(50.0), speed_metrics(40.0)
    return PerformanceTest.objects.create(team=adapter.team, created_by=user, name="speed of support-bot",
                                          adapter=adapter, base_model=adapter.base_model, test_prompts=["hi"],
                                          output_lengths=[64], batch_sizes=[1, 4], status="completed", progress=1.0,
                                          base_model_metrics=base, finetuned_metrics=finetuned,
                                          comparison=compare(base, finetuned))


@pytest.fixture
def viewer(user):
    vic = make_user("vic")
    team_member_add(team=personal_team(user), user=vic, role=Membership.Role.VIEWER)
    return vic


def _comparisons_html(html: str) -> str:
    return html[html.index('<section id="comparisons">'):html.index("<!-- /comparisons -->")]


# -- pages render ---------------------------------------------------------------------------------------


def test_every_evaluation_page_renders_for_a_member(user, adapter, session, judge, speed_test):
    page = _login(user)
    html = page.get("/finetune/evaluation/").content.decode()
    assert "support check" in html and f"judge #{judge.pk}" in html and "speed of support-bot" in html
    assert 'id="session-form"' in html and 'id="speed-form"' in html and 'id="judge-form"' in html
    assert f'<option value="{adapter.pk}">{ADAPTER_NAME} v2 (tiny-base, team' in html
    filtered = page.get("/finetune/evaluation/", {"adapter": adapter.pk}).content.decode()
    assert "support check" in filtered and f"Evaluation: {ADAPTER_NAME} v2" in filtered
    other = make_adapter(user, name="other-bot")
    assert f'data-session="{session.pk}"' not in page.get("/finetune/evaluation/", {"adapter": other.pk}).content.decode()

    r = page.get(f"/finetune/evaluation/sessions/{session.pk}/")
    html = r.content.decode()
    assert r.status_code == 200 and "Model comparison: support check" in html
    assert "You are a helpful support agent." in html and html.count('class="comparison"') == 3
    assert "Base model" in html and "Fine-tuned model" in html and "tok/s" in html  # not blind: named and timed
    assert 'href="/api/v1/finetune/eval/compare/%d/export?format=csv"' % session.pk in html
    export = page.get(f"/api/v1/finetune/eval/compare/{session.pk}/export", {"format": "csv"})  # the browser's session
    assert export.status_code == 200 and export["Content-Type"].startswith("text/csv")
    assert ANSWERS[0][2] in export.content.decode()
    status = page.get(f"/finetune/evaluation/sessions/{session.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert status.startswith('<div id="session-status"')
    comparison = session.comparisons.first()
    block = page.get(f"/finetune/evaluation/sessions/{session.pk}/comparisons/{comparison.pk}/").content.decode()
    assert f'id="comparison-{comparison.pk}"' in block and ANSWERS[0][2] in block
    assert "1 of 3 rated" not in page.get(f"/finetune/evaluation/sessions/{session.pk}/rate/").content.decode()
    assert "0 of 3 rated" in page.get(f"/finetune/evaluation/sessions/{session.pk}/rate/").content.decode()
    results = page.get(f"/finetune/evaluation/sessions/{session.pk}/results/").content.decode()
    assert 'id="preference-chart"' in results and f"judge #{judge.pk}" in results
    judge_html = page.get(f"/finetune/evaluation/judge/{judge.pk}/").content.decode()
    assert 'id="judge-evaluations"' in judge_html and judge_html.count("data-evaluation=") == 3
    assert page.get(f"/finetune/evaluation/judge/{judge.pk}/", HTTP_HX_REQUEST="true").content.decode().startswith(
        '<div id="judge-body"')
    speed_html = page.get(f"/finetune/evaluation/performance/{speed_test.pk}/").content.decode()
    assert 'id="overall-tokens_per_second"' in speed_html and 'id="memory-chart"' in speed_html
    progress = page.get(f"/finetune/evaluation/progress/comparison/{session.pk}/").content.decode()
    assert f'id="comparison-{session.pk}-progress"' in progress and 'data-live-active="0"' in progress
    assert page.get(f"/finetune/evaluation/progress/training/{session.pk}/").status_code == 404


def test_the_adapter_page_links_to_its_evaluations_and_the_nav_to_the_dashboard(user, adapter):
    html = _login(user).get(f"/finetune/adapters/{adapter.pk}/").content.decode()
    assert f'href="/finetune/evaluation/?adapter={adapter.pk}" id="evaluate-adapter"' in html
    assert 'href="/finetune/evaluation/"' in html


def test_a_running_sessions_rows_follow_it_live(user, adapter):
    session = make_session(user, adapter, done=1, status="running")
    html = _login(user).get("/finetune/evaluation/").content.decode()
    assert f'data-live-kind="comparison" data-live-id="{session.pk}"' in html
    assert 'data-live-active="1"' in html and "1 / 3" in html
    page = _login(user).get(f"/finetune/evaluation/sessions/{session.pk}/").content.decode()
    assert 'data-active="1"' in page and page.count('data-status="pending"') == 2
    assert 'id="cancel-session"' in page and 'id="prompts-form"' not in page  # no prompts while it runs


# -- access ---------------------------------------------------------------------------------------------


def test_an_outsider_gets_404_from_every_evaluation_page_and_post(user, outsider, session, judge, speed_test):
    page = _login(outsider)
    s, c, j, p = session.pk, session.comparisons.first().pk, judge.pk, speed_test.pk
    for url in (f"sessions/{s}/", f"sessions/{s}/comparisons/{c}/", f"sessions/{s}/rate/", f"sessions/{s}/results/",
                f"judge/{j}/", f"performance/{p}/", f"progress/comparison/{s}/", f"progress/judge/{j}/",
                f"progress/performance/{p}/"):
        assert page.get(f"/finetune/evaluation/{url}").status_code == 404, url
    for url, body in ((f"sessions/{s}/run/", {}), (f"sessions/{s}/cancel/", {}), (f"sessions/{s}/delete/", {}),
                      (f"sessions/{s}/prompts/", {"prompts": "x"}),
                      (f"sessions/{s}/comparisons/{c}/rate/", {"preferred": "A"}),
                      (f"sessions/{s}/rate/", {"comparison_id": c, "preferred": "A"}),
                      (f"judge/{j}/cancel/", {}), (f"performance/{p}/cancel/", {}),
                      ("judge/new/", {"session": s, "model": "gpt-4o", "api_key": "k", "provider": "openai",
                                      "criteria": ["accuracy"], "num_evaluations": 1})):
        r = page.post(f"/finetune/evaluation/{url}", body)
        assert r.status_code in (400, 404), (url, r.status_code)  # 400: the form offers no such session
    assert ComparisonSession.objects.filter(pk=s).exists() and not ComparisonRating.objects.exists()
    html = page.get("/finetune/evaluation/").content.decode()
    assert "support check" not in html and ADAPTER_NAME not in html


def test_a_viewer_reads_but_every_post_is_403_and_rates_only_when_the_team_allows(user, viewer, adapter, session,
                                                                                   judge, speed_test):
    from tests.nexus.test_access import _db_state

    page = _login(viewer)
    s, c = session.pk, session.comparisons.first().pk
    assert page.get(f"/finetune/evaluation/sessions/{s}/").status_code == 200
    html = page.get(f"/finetune/evaluation/sessions/{s}/").content.decode()
    assert 'id="session-controls"' not in html and "data-rating-form" not in html
    before = _db_state()
    for url, body in (
            ("sessions/new/", {"name": "v", "comparison_type": "batch", "adapter": adapter.pk, "prompts": "hi",
                               "max_tokens": 8, "temperature": 0.5, "raters_required": 1}),
            ("performance/new/", {"adapter": adapter.pk, "output_lengths": "8", "batch_sizes": "1",
                                  "num_iterations": 1, "warmup_iterations": 0}),
            ("judge/new/", {"session": s, "provider": "openai", "model": "gpt-4o", "api_key": "sk-x",
                            "criteria": ["accuracy"], "num_evaluations": 1}),
            (f"sessions/{s}/run/", {}), (f"sessions/{s}/cancel/", {}), (f"sessions/{s}/delete/", {}),
            (f"sessions/{s}/prompts/", {"prompts": "one more"}),
            (f"sessions/{s}/comparisons/{c}/rate/", {"preferred": "A"}),
            (f"sessions/{s}/rate/", {"comparison_id": c, "preferred": "A"}),
            (f"judge/{judge.pk}/cancel/", {}), (f"performance/{speed_test.pk}/cancel/", {})):
        r = page.post(f"/finetune/evaluation/{url}", body)
        assert r.status_code == 403, (url, r.status_code)
        assert _db_state() == before, url

    team = session.team
    team.viewers_rate_evaluations = True
    team.save(update_fields=["viewers_rate_evaluations"])
    assert "data-rating-form" in page.get(f"/finetune/evaluation/sessions/{s}/").content.decode()
    r = page.post(f"/finetune/evaluation/sessions/{s}/comparisons/{c}/rate/", {"preferred": "B", "A_accuracy": "2"})
    assert r.status_code == 302
    rating = ComparisonRating.objects.get(rater=viewer)
    assert (rating.preferred, rating.ratings) == ("finetuned", {"base": {"accuracy": 2}})  # not blind: A is base
    assert page.post(f"/finetune/evaluation/sessions/{s}/run/").status_code == 403  # rating is all a viewer may do


# -- blind ----------------------------------------------------------------------------------------------


def test_a_blind_page_before_reveal_says_nothing_of_who_wrote_which_response(user, adapter):
    session = make_session(user, adapter, blind=True, a_is_base=[False, True, False])
    page = _login(user)
    html = page.get(f"/finetune/evaluation/sessions/{session.pk}/").content.decode()
    comparisons = _comparisons_html(html)
    assert comparisons.count('class="comparison"') == 3
    assert "Response A" in comparisons and "Response B" in comparisons
    for leak in (ADAPTER_NAME, "tiny-base", "Base", "base", "Fine-tuned", "fine-tuned", "finetuned", "tok/s",
                 " s |", "1234", "31.5", "29.2"):
        assert leak not in comparisons, leak
    # the first comparison's A is the fine-tuned model: its text is shown as A, its timing nowhere
    first = comparisons[:comparisons.index('class="comparison"', comparisons.index('class="comparison"') + 1)]
    assert first.index(ANSWERS[0][2]) < first.index(ANSWERS[0][1])
    assert 'data-preferred="A">A</label>' in comparisons and 'data-preferred="B">B</label>' in comparisons
    flow = page.get(f"/finetune/evaluation/sessions/{session.pk}/rate/").content.decode()
    for leak in (ADAPTER_NAME, "tiny-base", "Fine-tuned", "finetuned", "tok/s", "1234"):
        assert leak not in flow, leak
    results = page.get(f"/finetune/evaluation/sessions/{session.pk}/results/").content.decode()
    assert 'id="results-blind"' in results and "preference-chart" not in results and ADAPTER_NAME not in results
    block = page.get(f"/finetune/evaluation/sessions/{session.pk}/comparisons/{session.comparisons.first().pk}/")
    assert ADAPTER_NAME not in block.content.decode() and "tok/s" not in block.content.decode()

    rate_all(session, user)
    html = page.get(f"/finetune/evaluation/sessions/{session.pk}/").content.decode()
    comparisons = _comparisons_html(html)
    assert "Fine-tuned model" in comparisons and "tok/s" in comparisons and "data-rating-form" not in comparisons


def test_a_judge_run_of_a_blind_session_is_withheld_until_it_is_revealed(user, adapter):
    session = make_session(user, adapter, blind=True)
    run = JudgeRun.objects.create(team=session.team, session=session, model="gpt-4o", status="completed")
    JudgeEvaluation.objects.create(run=run, comparison=session.comparisons.first(), status="done",
                                   judge_verdict="finetuned", judge_reasoning="B is kinder")
    page = _login(user)
    html = page.get(f"/finetune/evaluation/judge/{run.pk}/").content.decode()
    assert 'id="evaluations-withheld"' in html and "B is kinder" not in html
    rate_all(session, user)
    html = page.get(f"/finetune/evaluation/judge/{run.pk}/").content.decode()
    assert "B is kinder" in html and f'id="judge-{run.pk}-verdicts"' in html


# -- forms ----------------------------------------------------------------------------------------------


def test_the_session_form_creates_a_session_and_opens_its_page(user, adapter):
    page = _login(user)
    r = page.post("/finetune/evaluation/sessions/new/", {
        "name": "from the form", "comparison_type": "batch", "adapter": adapter.pk,
        "prompts": "First question?\n\n  Second question?  \n", "system_prompt": "Be brief.", "max_tokens": 32,
        "temperature": 0.2, "raters_required": 1})
    session = ComparisonSession.objects.get(name="from the form")
    assert r.status_code == 302 and r.url == f"/finetune/evaluation/sessions/{session.pk}/"
    assert list(session.comparisons.values_list("prompt", flat=True)) == ["First question?", "Second question?"]
    assert session.status == "created" and session.system_prompt == "Be brief."
    assert session.sampling_params["max_tokens"] == 32 and session.sampling_params["temperature"] == 0.2


def test_a_conversation_is_written_a_turn_a_line_with_a_separator_line_between_conversations(user, adapter):
    page = _login(user)
    page.post("/finetune/evaluation/sessions/new/", {
        "name": "chat", "comparison_type": "conversation", "adapter": adapter.pk,
        "prompts": "Hi, I need help.\nassistant: Sure, with what?\nuser: My order.\n---\nHello!\nWhat can you do?",
        "max_tokens": 32, "temperature": 0.2, "raters_required": 1})
    first, second = ComparisonSession.objects.get(name="chat").comparisons.order_by("index")
    assert first.messages == [{"role": "user", "content": "Hi, I need help."},
                              {"role": "assistant", "content": "Sure, with what?"},
                              {"role": "user", "content": "My order."}]
    assert [m["content"] for m in second.messages] == ["Hello!", "What can you do?"]


def test_form_errors_show_the_fields_message_and_keep_what_was_typed(user, adapter):
    page = _login(user)
    # a service refusal, put next to the field its details name
    r = page.post("/finetune/evaluation/sessions/new/", {
        "name": "too many", "comparison_type": "single", "adapter": adapter.pk, "prompts": "one\ntwo",
        "max_tokens": 32, "temperature": 0.2, "raters_required": 1})
    html = r.content.decode()
    assert r.status_code == 400 and not ComparisonSession.objects.exists()
    field = re.search(r'<label class="field invalid">\s*Prompts.*?</label>', html, re.S).group(0)
    assert "a single comparison takes one prompt, got 2" in field
    assert 'value="too many"' in html and "one\ntwo</textarea>" in html
    # the form's own checks
    r = page.post("/finetune/evaluation/performance/new/", {"adapter": adapter.pk, "output_lengths": "64, many",
                                                             "batch_sizes": "1", "num_iterations": 3,
                                                             "warmup_iterations": 0})
    assert r.status_code == 400 and "write whole numbers separated by commas" in r.content.decode()
    assert 'value="64, many"' in r.content.decode()
    r = page.post("/finetune/evaluation/performance/new/", {"adapter": adapter.pk, "output_lengths": "64, 5000",
                                                             "batch_sizes": "1", "num_iterations": 3,
                                                             "warmup_iterations": 0})
    assert r.status_code == 400 and "value 2: must be an integer from 1 to 2048, got 5000" in r.content.decode()
    # a judge over a session with nothing answered yet
    empty = make_session(user, adapter, done=0, status="created")
    r = page.post("/finetune/evaluation/judge/new/", {"session": empty.pk, "provider": "openai", "model": "gpt-4o",
                                                       "api_key": "sk-secret-typed-key", "criteria": ["accuracy"],
                                                       "num_evaluations": 1})
    html = r.content.decode()
    assert r.status_code == 409 and "has no finished comparison to judge" in html
    assert "sk-secret-typed-key" not in html and 'value="gpt-4o"' in html


def test_a_speed_test_and_a_judge_start_from_their_forms(user, adapter, session, settings):
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,127.0.0.1"  # nothing is called: the run is not started
    page = _login(user)
    r = page.post("/finetune/evaluation/performance/new/", {"adapter": adapter.pk, "output_lengths": "16, 32",
                                                             "batch_sizes": "1 2", "num_iterations": 3,
                                                             "warmup_iterations": 1, "prompts": "Say hi."})
    test = PerformanceTest.objects.get()
    assert r.status_code == 302 and r.url == f"/finetune/evaluation/performance/{test.pk}/"
    assert (test.output_lengths, test.batch_sizes, test.test_prompts) == ([16, 32], [1, 2], ["Say hi."])
    r = page.post("/finetune/evaluation/judge/new/", {"session": session.pk, "provider": "openai",
                                                       "model": "gpt-4o-mini", "api_key": "sk-judge-key-0001",
                                                       "base_url": "http://127.0.0.1:9/v1", "criteria": ["accuracy", "helpfulness"], "num_evaluations": 2})
    run = JudgeRun.objects.get()
    assert r.status_code == 302 and r.url == f"/finetune/evaluation/judge/{run.pk}/"
    assert run.evaluation_criteria == ["accuracy", "helpfulness"] and run.num_evaluations == 2
    assert run.key_last4 == "0001"
    html = page.get(r.url).content.decode()
    assert "••••0001" in html and "sk-judge-key-0001" not in html


# -- rating and session actions -------------------------------------------------------------------------


def test_stars_and_a_preference_are_stored_in_model_terms_and_shown_again(user, adapter):
    session = make_session(user, adapter, blind=True, a_is_base=[False, True, True])
    comparison = session.comparisons.get(index=0)  # A is the fine-tuned model
    page = _login(user)
    url = f"/finetune/evaluation/sessions/{session.pk}/comparisons/{comparison.pk}/rate/"
    r = page.post(url, {"preferred": "A", "A_relevance": "5", "A_accuracy": "4", "B_relevance": "2",
                        "reason": "A answers the order number"}, HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert r.status_code == 200 and "rating saved" in html
    rating = ComparisonRating.objects.get()
    assert rating.preferred == "finetuned" and rating.reason == "A answers the order number"
    assert rating.ratings == {"finetuned": {"relevance": 5, "accuracy": 4}, "base": {"relevance": 2}}
    assert f'id="c{comparison.pk}-A-relevance-5" name="A_relevance" value="5" checked' in html
    assert f'id="c{comparison.pk}-pref-A" name="preferred" value="A" checked' in html
    # a refusal comes back in the block with what was chosen
    r = page.post(url, {"A_relevance": "3"}, HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert r.status_code == 200 and "preferred: is required" in html
    assert f'id="c{comparison.pk}-A-relevance-3" name="A_relevance" value="3" checked' in html
    assert ComparisonRating.objects.get().ratings["finetuned"]["relevance"] == 5
    other = make_session(user, adapter)
    assert page.post(f"/finetune/evaluation/sessions/{other.pk}/comparisons/{comparison.pk}/rate/",
                     {"preferred": "A"}).status_code == 404


def test_the_rating_flow_shows_one_comparison_at_a_time_then_the_way_to_the_results(user, adapter):
    session = make_session(user, adapter, blind=True, answers=ANSWERS[:2], a_is_base=[True, False])
    page = _login(user)
    url = f"/finetune/evaluation/sessions/{session.pk}/rate/"
    first, second = session.comparisons.order_by("index")
    html = page.get(url).content.decode()
    assert "0 of 2 rated" in html and f'id="comparison-{first.pk}"' in html and f"comparison-{second.pk}" not in html
    assert "<kbd>1</kbd> A is better" in html
    html = page.post(url, {"comparison_id": first.pk, "preferred": "B"}, HTTP_HX_REQUEST="true").content.decode()
    assert html.startswith('<div id="rate-flow"') and "1 of 2 rated" in html and f'id="comparison-{second.pk}"' in html
    html = page.post(url, {"comparison_id": second.pk}, HTTP_HX_REQUEST="true").content.decode()
    assert "preferred: is required" in html and f'id="comparison-{second.pk}"' in html
    html = page.post(url, {"comparison_id": second.pk, "preferred": "tie"}, HTTP_HX_REQUEST="true").content.decode()
    assert "2 of 2 rated" in html and "You have rated every comparison" in html and 'id="results-link"' in html
    assert sorted(ComparisonRating.objects.values_list("preferred", flat=True)) == ["finetuned", "tie"]
    # revealed: the ratings are closed
    assert "ratings are closed" in page.get(url).content.decode() or "every comparison" in page.get(url).content.decode()
    r = page.post(url, {"comparison_id": first.pk, "preferred": "A"})
    assert r.status_code == 302 and ComparisonRating.objects.get(comparison=first).preferred == "finetuned"


def test_results_draw_the_preference_with_intervals_criteria_raters_and_speed(user, adapter, session):
    other = make_user("otto")
    team_member_add(team=session.team, user=other, role=Membership.Role.MEMBER)
    rate_all(session, user, "finetuned")
    rate_all(session, other, "finetuned")
    ComparisonRating.objects.filter(rater=other, comparison__index=0).update(preferred="tie")
    html = _login(user).get(f"/finetune/evaluation/sessions/{session.pk}/results/").content.decode()
    chart = html[html.index('id="preference-chart"'):html.index("</svg>", html.index('id="preference-chart"'))]
    counts = dict(re.findall(r'data-key="(\w+)" data-count="(\d+)"', chart))
    assert counts == {"base": "0", "tie": "1", "finetuned": "5"}
    assert chart.count('class="whisker"') == 3 and chart.count("<rect") == 3
    assert "No significant difference" in html or "fine-tuned model is preferred" in html
    assert "n = 6 ratings" in html and "Krippendorff" in html
    assert 'id="criteria-chart"' in html and 'id="speed-chart"' in html
    speed = html[html.index('id="speed-chart"'):]
    assert "29.2 tok/s" in speed and "31.5 tok/s" in speed


def test_run_cancel_delete_and_more_prompts_from_the_session_page(user, adapter):
    session = make_session(user, adapter, done=1, status="completed")
    page = _login(user)
    base = f"/finetune/evaluation/sessions/{session.pk}"
    r = page.post(f"{base}/prompts/", {"prompts": "A fourth question?"})
    assert r.status_code == 302 and session.comparisons.count() == 4
    r = page.post(f"{base}/prompts/", {"prompts": ""})
    assert r.status_code == 400 and "This field is required" in r.content.decode()
    assert page.post(f"{base}/run/").status_code == 302
    session.refresh_from_db()
    assert session.status == "queued"
    r = page.post(f"{base}/delete/", follow=True)
    assert "cancel it first" in r.content.decode() and ComparisonSession.objects.filter(pk=session.pk).exists()
    page.post(f"{base}/cancel/")
    session.refresh_from_db()
    assert session.status == "cancelled"
    r = page.post(f"{base}/delete/")
    assert r.status_code == 302 and r.url == "/finetune/evaluation/" and not ComparisonSession.objects.exists()


def test_a_speed_test_page_draws_each_cell_and_the_differences(user, speed_test):
    html = _login(user).get(f"/finetune/evaluation/performance/{speed_test.pk}/").content.decode()
    cells = html[html.index('id="cells-tokens_per_second"'):html.index("</svg>", html.index('id="cells-tokens_per_second"'))]
    assert "64 tokens × 1 at once" in cells and "64 tokens × 4 at once" in cells and cells.count("<rect") == 4
    assert cells.count('class="whisker"') == 4
    diff = html[html.index('id="performance-diff"'):]
    assert "-20.0%" in diff and "512 MB" in html
