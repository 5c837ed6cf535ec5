"""The LLM judge through a local server that speaks the OpenAI protocol: position bias removed by
judging both orders, strict parsing with one retry, timeouts, wrong keys, agreement with people."""
from __future__ import annotations

import json
import re

import pytest

from evaluation_app.engine.judge import CRITERIA
from evaluation_app.models import ComparisonRating, JudgeEvaluation, JudgeRun
from tests.evaluation_app.conftest import run_judge
from tests.factories import make_comparison_session as make_session
from tests.fakes.teachers import FakeTeacher

pytestmark = pytest.mark.django_db
KEY = "sk-judge-Secret-Key-7c1f"
URL = "/api/v1/finetune/eval/judge"


@pytest.fixture(autouse=True)
def _judges_on_loopback(settings) -> None:
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com,127.0.0.1"


def _blocks(messages: list[dict]) -> tuple[str, str, str]:
    text = messages[-1]["content"]
    a = re.search(r"<response_a>\n(.*?)\n</response_a>", text, re.S).group(1)
    b = re.search(r"<response_b>\n(.*?)\n</response_b>", text, re.S).group(1)
    prompt = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.S).group(1)
    return prompt, a, b


def verdict(choice: str, reasoning: str = "because") -> str:
    scores = {c: 3 for c in CRITERIA}
    return json.dumps({"response_a_scores": {**scores, "accuracy": 5 if choice == "A" else 2},
                       "response_b_scores": {**scores, "accuracy": 5 if choice == "B" else 2},
                       "verdict": choice, "reasoning": reasoning})


def prefers_finetuned(messages, model):  # noqa: ANN001
    _, a, _ = _blocks(messages)
    return verdict("A" if a.startswith("FINE") else "B")


def always_first(messages, model):  # noqa: ANN001
    return verdict("A", "the first one reads better")


def _start(api, fake: FakeTeacher, session, **extra) -> dict:
    body = {"session_id": session.pk, "judge_config": {"provider": "openai", "model": "gpt-4o", "api_key": KEY,
                                                       "base_url": fake.openai_base_url}, **extra}
    r = api.post(URL, body, format="json")
    assert r.status_code == 202, r.content
    return r.json()


def _judged(api, fake, session, **extra) -> dict:
    run = _start(api, fake, session, **extra)
    run_judge(run["id"])
    return api.get(f"{URL}/{run['id']}").json()


def test_a_judge_that_prefers_the_finetuned_answer_in_both_orders_says_finetuned(api, user, base_model):
    session = make_session(user, base_model)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=prefers_finetuned) as fake:
        detail = _judged(api, fake, session)
        assert fake.count("/v1/chat/completions", status=200) == 8  # 4 pairs x 2 orders
    assert detail["status"] == "completed" and detail["calls"] == 8
    assert detail["judge_config"]["key_last4"] == KEY[-4:] and KEY not in json.dumps(detail)
    for e in detail["evaluations"]:
        assert e["judge_verdict"] == "finetuned" and e["confidence"] == 1.0 and e["consistent"] is True
        assert e["criteria_scores"]["finetuned"]["accuracy"] == 5 and e["criteria_scores"]["base"]["accuracy"] == 2
        assert "because" in e["judge_reasoning"]
    summary = detail["summary"]
    assert summary["verdicts"]["counts"] == {"base": 0, "finetuned": 4, "tie": 0}
    assert summary["position_consistency"]["rate"] == 1.0
    assert summary["criteria"]["accuracy"]["finetuned"]["mean"] == 5


def test_a_judge_that_always_prefers_the_first_response_produces_only_ties(api, user, base_model):
    session = make_session(user, base_model)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=always_first) as fake:
        detail = _judged(api, fake, session)
        # each pair was shown both ways round
        firsts = [_blocks(r["messages"])[1] for r in fake.requests]
        assert sorted(t.split()[0] for t in firsts) == ["BASE"] * 4 + ["FINE"] * 4
    assert {e["judge_verdict"] for e in detail["evaluations"]} == {"tie"}
    assert all(e["consistent"] is False and e["confidence"] == 0.0 for e in detail["evaluations"])
    summary = detail["summary"]
    assert summary["verdicts"]["counts"]["tie"] == 4 and summary["position_consistency"]["rate"] == 0.0
    assert summary["verdicts"]["winner"] == "no significant difference"


def test_a_malformed_answer_is_asked_again_once_then_recorded_as_that_pairs_error(api, user, base_model):
    session = make_session(user, base_model, n=3)

    def flaky(messages, model):  # noqa: ANN001
        prompt, a, _ = _blocks(messages)
        if prompt == "Question 1?":
            return "I think A is better, score 4/5"  # prose: never guessed
        return prefers_finetuned(messages, model)

    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=flaky) as fake:
        detail = _judged(api, fake, session)
        assert len(fake.calls_for(fake.requests[0]["prompt"])) >= 1
        bad = [r for r in fake.requests if "Question 1?" in r["messages"][-1]["content"]]
        assert len(bad) == 2  # asked, asked again once, then given up (the second order is not asked)
    assert detail["status"] == "completed"
    errors = [e for e in detail["evaluations"] if e["status"] == "error"]
    assert len(errors) == 1 and errors[0]["index"] == 1 and errors[0]["judge_verdict"] == ""
    assert "malformed judge answer twice" in errors[0]["error"] and "not a single JSON object" in errors[0]["error"]
    assert detail["summary"]["errors"] == 1 and detail["summary"]["judged"] == 2


def test_a_judge_that_times_out_records_errors_and_a_run_with_no_verdict_fails(api, user, base_model, settings,
                                                                               monkeypatch):
    from evaluation_app.engine import judging

    settings.NEXUS_JUDGE_TIMEOUT_S = 0.5
    monkeypatch.setattr(judging, "RETRIES", 1)
    session = make_session(user, base_model, n=2)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], script=lambda record: ("slow", 5)) as fake:
        detail = _judged(api, fake, session, concurrency=2)
        assert fake.count("/v1/chat/completions") == 4  # each pair: first order, then one retry
    assert detail["status"] == "failed"
    assert "no usable verdict for any of the 2 pairs" in detail["error"] and "did not answer within 0.5 s (2 attempts)" in detail["error"]
    assert JudgeEvaluation.objects.filter(run_id=detail["id"], status="error").count() == 2


def test_a_wrong_key_fails_the_run_at_once_without_retrying(api, user, base_model):
    session = make_session(user, base_model, n=3)
    with FakeTeacher(api_key="the-right-key", models=["gpt-4o"], responder=prefers_finetuned) as fake:
        detail = _judged(api, fake, session, concurrency=1)
        assert fake.count("/v1/chat/completions") == 1
    assert detail["status"] == "failed" and "key" in detail["error"].lower() and KEY not in detail["error"]


def test_agreement_between_judge_and_people_is_cohens_kappa(api, user, base_model):
    session = make_session(user, base_model, n=4)
    comparisons = list(session.comparisons.order_by("index"))
    for c, preferred in zip(comparisons, ["finetuned", "finetuned", "base", "tie"]):
        ComparisonRating.objects.create(comparison=c, rater=user, preferred=preferred)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=prefers_finetuned) as fake:
        detail = _judged(api, fake, session)
    agreement = detail["summary"]["agreement_with_humans"]
    # judge: finetuned x4; people: finetuned, finetuned, base, tie -> po = 0.5, pe = 0.5 -> kappa 0
    assert agreement["comparisons"] == 4 and agreement["observed_agreement"] == 0.5
    assert agreement["kappa"] == pytest.approx(0.0)


def test_a_blind_sessions_verdicts_wait_for_the_reveal(api, user, base_model):
    session = make_session(user, base_model, n=2, blind=True)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=prefers_finetuned) as fake:
        detail = _judged(api, fake, session)
    assert detail["status"] == "completed" and detail["revealed"] is False
    assert detail["evaluations"] is None and detail["summary"] is None
    for c in session.comparisons.all():
        ComparisonRating.objects.create(comparison=c, rater=user, preferred="tie")
    detail = api.get(f"{URL}/{detail['id']}").json()
    assert detail["revealed"] is True and len(detail["evaluations"]) == 2


def test_judge_requests_are_checked_and_the_config_endpoint_shows_the_template(api, user, base_model, outsider_api):
    session = make_session(user, base_model, n=1)
    r = api.post(URL, {}, format="json")
    assert r.status_code == 400 and set(r.json()["error"]["details"]) == {"session_id", "judge_config"}
    r = api.post(URL, {"session_id": session.pk, "judge_config": {"provider": "openai", "model": "gpt-4o",
                                                                  "api_key": KEY, "base_url": "http://10.1.2.3/v1"}},
                 format="json")
    assert r.status_code == 400 and "judge_config.base_url" in r.json()["error"]["details"]
    r = api.post(URL, {"session_id": session.pk, "judge_config": {"model": "gpt-4o", "api_key": KEY},
                       "evaluation_criteria": ["relevance"], "scoring_rubric": {"charm": "x"}}, format="json")
    assert r.status_code == 400 and "scoring_rubric.charm" in r.json()["error"]["details"]
    session.comparisons.update(status="pending")
    r = api.post(URL, {"session_id": session.pk, "judge_config": {"model": "gpt-4o", "api_key": KEY}}, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "nothing_to_judge"
    assert JudgeRun.objects.count() == 0
    config = api.get(f"{URL}/config").json()
    assert config["evaluation_criteria"] == list(CRITERIA) and "{response_a}" in config["prompt_template"]
    assert '"verdict": "A" | "B" | "tie"' in config["prompt_template"] and "both orders" in config["position_debiasing"]
    r = outsider_api.post(URL, {"session_id": session.pk, "judge_config": {"model": "gpt-4o", "api_key": KEY}},
                          format="json")
    assert r.status_code == 404


def test_outsiders_get_404_on_judge_runs(api, user, base_model, outsider_api):
    session = make_session(user, base_model, n=1)
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=prefers_finetuned) as fake:
        run = _start(api, fake, session)
    for method in ("get", "delete"):
        assert getattr(outsider_api, method)(f"{URL}/{run['id']}").status_code == 404
    assert outsider_api.get(f"{URL}/{run['id']}/events").status_code == 404
    assert outsider_api.get(URL).json()["count"] == 0
    r = api.delete(f"{URL}/{run['id']}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"


def test_the_admin_lists_judge_runs_and_sessions_without_the_judges_key(user, base_model, admin_client):
    from nexus.secrets import secret_encrypt

    session = make_session(user, base_model, n=1)
    run = JudgeRun.objects.create(team=session.team, session=session, model="gpt-4o", key_last4=KEY[-4:],
                                  api_key_encrypted=secret_encrypt(KEY), status="completed")
    for url in ("/admin/evaluation_app/judgerun/", f"/admin/evaluation_app/judgerun/{run.pk}/change/",
                "/admin/evaluation_app/comparisonsession/", f"/admin/evaluation_app/comparisonsession/{session.pk}/change/",
                "/admin/evaluation_app/performancetest/", "/admin/evaluation_app/comparisonrating/"):
        r = admin_client.get(url)
        assert r.status_code == 200, url
        assert KEY.encode() not in r.content and run.api_key_encrypted.encode() not in r.content


def test_the_designs_flat_judge_config_works_too(api, user, base_model, settings):
    """Design 10.4.1: {"judge_model", "judge_api_key", ...}, with its "deployed model" form (this
    machine resolves no public name, so a provider's own API cannot be the example here)."""
    from tests.factories import make_deployment

    session = make_session(user, base_model, n=1)
    deployment = make_deployment(user, base_model, status="running")
    r = api.post(URL, {"session_id": session.pk, "judge_model": f"deployed:{deployment.pk}",
                       "evaluation_criteria": ["relevance"], "scoring_rubric": {"relevance": "on topic"},
                       "num_evaluations": 2, "temperature": 0.0}, format="json")
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["judge_config"]["provider"] == "deployed" and body["judge_config"]["deployment_id"] == deployment.pk
    assert body["num_evaluations"] == 2 and body["evaluation_criteria"] == ["relevance"]
    r = api.post(URL, {"session_id": session.pk, "judge_model": "gpt-4", "judge_config": {"model": "gpt-4"}},
                 format="json")
    assert r.status_code == 400 and "judge_model" in r.json()["error"]["details"]
