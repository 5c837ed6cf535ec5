"""Comparison sessions on real llama.cpp (the demo model, and base + a random adapter): what a user
sends, what is stored, what a blind rater may see, and the summary a team decides on."""
from __future__ import annotations

import csv
import io
import json

import pytest

from evaluation_app.models import ComparisonRating, ComparisonSession, PromptComparison
from nexus.models import Membership
from nexus.teams import team_member_add
from tests.conftest import api_client_for
from tests.evaluation_app.conftest import run_session
from tests.factories import make_user, personal_team

pytestmark = pytest.mark.django_db
URL = "/api/v1/finetune/eval/compare"
FAST = {"max_tokens": 8, "temperature": 0.8}


def _create(api, adapter, **body):
    payload = {"name": "s", "adapter_id": adapter.pk, "test_prompts": ["What is 2 + 2?"], "sampling_params": FAST,
               **body}
    r = api.post(URL, payload, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_a_batch_session_stores_both_responses_with_the_designs_fields(api, eval_adapter):
    body = _create(api, eval_adapter, comparison_type="batch", system_prompt="Answer briefly.",
                   test_prompts=["What is the capital of France?", "Name a colour."])
    assert body["status"] == "created" and body["num_comparisons"] == 2 and body["revealed"] is True
    assert [m["role"] for m in body["models"]] == ["base", "finetuned"]
    assert body["base_model"] == eval_adapter.base_model.name and body["adapter_id"] == eval_adapter.pk
    r = api.post(f"{URL}/{body['id']}/run")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    run_session(body["id"])
    detail = api.get(f"{URL}/{body['id']}").json()
    assert detail["status"] == "completed" and detail["progress"] == 1.0 and len(detail["comparisons"]) == 2
    for c in detail["comparisons"]:
        assert c["status"] == "done" and c["a_is"] == "base"
        for role, finetuned in (("base", False), ("finetuned", True)):
            response = c[f"{role}_response"]
            assert response["is_finetuned"] is finetuned
            assert response["tokens_generated"] > 0 and response["generation_time_ms"] > 0
            assert response["tokens_per_second"] == pytest.approx(
                response["tokens_generated"] / response["generation_time_ms"] * 1000, rel=0.02)
            assert response["finish_reason"] in ("stop", "length") and response["response"]
        assert c["finetuned_response"]["adapter_id"] == eval_adapter.pk
    # the random adapter changes what the model says
    assert any(c["base_response"]["response"] != c["finetuned_response"]["response"] for c in detail["comparisons"])
    assert api.post(f"{URL}/{body['id']}/run").status_code == 409  # nothing left to compare


def test_the_same_seed_gives_both_sides_the_same_draw_and_a_run_is_reproducible(api, eval_adapter, base_model):
    """Base against base (as a merged-free stand-in): same seed per prompt means identical text."""
    prompts = ["Tell me a story about a cat.", "Write a haiku about rain."]
    sampling = {"max_tokens": 12, "temperature": 1.0, "seed": 1234}
    first = _create(api, eval_adapter, test_prompts=prompts, sampling_params=sampling)
    again = _create(api, eval_adapter, test_prompts=prompts, sampling_params=sampling)
    other = _create(api, eval_adapter, test_prompts=prompts, sampling_params={**sampling, "seed": 99})
    for s in (first, again, other):
        run_session(api.post(f"{URL}/{s['id']}/run").json()["id"])
    texts = {s["id"]: [(c["base_response"]["response"], c["finetuned_response"]["response"])
                       for c in api.get(f"{URL}/{s['id']}").json()["comparisons"]] for s in (first, again, other)}
    assert texts[first["id"]] == texts[again["id"]]
    assert texts[first["id"]] != texts[other["id"]]
    seeds = list(PromptComparison.objects.filter(session_id=first["id"]).order_by("index").values_list("seed", flat=True))
    assert seeds == [1234, 1235]


def test_bad_requests_name_the_field(api, eval_adapter, user):
    def err(body, code=400):
        r = api.post(URL, body, format="json")
        assert r.status_code == code, r.content
        return r.json()["error"]

    e = err({})
    assert set(e["details"]) == {"name"}
    assert "adapter_id" in err({"name": "x"})["details"]
    assert "comparison_type" in err({"name": "x", "adapter_id": eval_adapter.pk, "comparison_type": "duel"})["details"]
    e = err({"name": "x", "adapter_id": eval_adapter.pk, "sampling_params": {"temperature": 9}})
    assert "sampling_params.temperature" in e["details"] and "from 0 to 2" in e["message"]
    e = err({"name": "x", "adapter_id": eval_adapter.pk, "comparison_type": "single", "test_prompts": ["a", "b"]})
    assert "one prompt" in e["message"]
    e = err({"name": "x", "adapter_id": eval_adapter.pk, "comparison_type": "conversation",
             "test_prompts": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]})
    assert "test_prompts[0][1].role" in e["details"] and "ends with the user turn" in e["message"]
    e = err({"name": "x", "adapter_id": eval_adapter.pk, "test_prompts": ["ok", ""]})
    assert "test_prompts[1]" in e["details"]
    e = err({"name": "x", "adapter_id": eval_adapter.pk, "colour": "red"})
    assert "colour" in e["details"]
    e = err({"name": "x", "models": [{"type": "base"}, {"type": "adapter"}]})
    assert "models[0].base_model" in e["details"]
    e = err({"name": "x", "models": [{"type": "adapter", "adapter_id": eval_adapter.pk}]})
    assert "exactly two" in e["message"]
    eval_adapter.gguf_path = ""
    eval_adapter.save(update_fields=["gguf_path"])
    e = err({"name": "x", "adapter_id": eval_adapter.pk}, code=409)
    assert "no GGUF export yet" in e["message"] and e["details"] == {"adapter_id": e["message"].split(": ", 1)[1]}
    assert ComparisonSession.objects.count() == 0


def test_prompts_come_from_a_datasets_test_split_only(api, eval_adapter, user):
    from datasets_app.models import Dataset
    from tests.factories import make_ready_dataset, pirate_records

    dataset = make_ready_dataset(user, pirate_records(6))
    r = api.post(URL, {"name": "x", "adapter_id": eval_adapter.pk, "dataset_id": dataset.pk}, format="json")
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_test_split" and "/split" in r.json()["error"]["message"]
    test = make_ready_dataset(user, pirate_records(3))
    Dataset.objects.filter(pk=test.pk).update(parent=dataset, split="test")
    body = _create(api, eval_adapter, test_prompts=None, dataset_id=dataset.pk)
    assert body["dataset_id"] == test.pk and body["num_comparisons"] == 3
    prompts = [c["prompt"] for c in body["comparisons"]]
    assert prompts == [r["instruction"] for r in pirate_records(3)]


def test_a_conversation_is_answered_turn_by_turn_by_each_model(api, eval_adapter):
    conversation = ["My name is Ada.", "What is my name?"]
    body = _create(api, eval_adapter, comparison_type="conversation", test_prompts=[conversation])
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    c = api.get(f"{URL}/{body['id']}").json()["comparisons"][0]
    assert c["messages"] == [{"role": "user", "content": t} for t in conversation] and c["prompt"] == conversation[-1]
    for role in ("base", "finetuned"):
        response = c[f"{role}_response"]
        assert len(response["turns"]) == 2 and response["response"] == response["turns"][-1]


def _rate(api, session_id, comparison_id, preferred, **extra):
    return api.post(f"{URL}/{session_id}/rate", {"comparison_id": comparison_id, "preferred": preferred, **extra},
                    format="json")


BLIND_KEYS = {"id", "index", "prompt", "messages", "status", "error", "response_a", "response_b", "num_ratings",
              "my_rating"}


def test_blind_hides_who_wrote_what_until_every_comparison_is_rated(api, eval_adapter, user):
    prompts = [f"Say something about the number {i}." for i in range(16)]
    body = _create(api, eval_adapter, comparison_type="blind", test_prompts=prompts)
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    draws = list(PromptComparison.objects.filter(session_id=body["id"]).values_list("a_is_base", flat=True))
    assert set(draws) == {True, False}  # drawn per comparison (all 16 alike: 1 in 32,768)

    def check_blind():
        detail = api.get(f"{URL}/{body['id']}", {"limit": 100}).json()
        assert detail["status"] == "completed" and detail["revealed"] is False
        assert "human" not in detail["summary"]
        for c in detail["comparisons"]:
            assert set(c) == BLIND_KEYS, set(c) ^ BLIND_KEYS
            assert set(c["response_a"]) <= {"response", "tokens_generated", "finish_reason", "turns"}
        export = api.get(f"{URL}/{body['id']}/export", {"format": "json"}).json()
        assert export["sides"] is None and all(set(c) == BLIND_KEYS for c in export["comparisons"])
        text = api.get(f"{URL}/{body['id']}/export", {"format": "csv"}).content.decode()
        assert "base_response" not in text and "a_is" not in text
        return detail["comparisons"]

    comparisons = check_blind()
    picks = {}
    for c in comparisons[:-1]:
        r = _rate(api, body["id"], c["id"], "A", ratings={"A": {"relevance": 5, "style": 4}, "B": {"relevance": 2}},
                  reason="A is clearer")
        assert r.status_code == 201 and r.json()["revealed"] is False
        assert r.json()["my_rating"] == {"preferred": "A", "ratings": {"A": {"relevance": 5, "style": 4},
                                                                       "B": {"relevance": 2}},
                                         "reason": "A is clearer", "updated_at": r.json()["my_rating"]["updated_at"]}
        picks[c["id"]] = "A"
    check_blind()  # one comparison left unrated: still blind
    last = comparisons[-1]
    r = _rate(api, body["id"], last["id"], "tie")
    assert r.json()["revealed"] is True and r.json()["progress"]["rated"] == 16
    detail = api.get(f"{URL}/{body['id']}", {"limit": 100}).json()
    assert detail["revealed"] is True
    a_is_base = dict(PromptComparison.objects.filter(session_id=body["id"]).values_list("id", "a_is_base"))
    for c in detail["comparisons"]:
        assert c["a_is"] == ("base" if a_is_base[c["id"]] else "finetuned")
        assert c["response_a"] == c[f"{c['a_is']}_response"]
        expected = "tie" if c["id"] == last["id"] else c["a_is"]
        assert c["preferred_model"] == expected
    human = detail["summary"]["human"]
    wins = sum(a_is_base[cid] for cid in picks)
    assert human["preference"]["counts"] == {"base": wins, "finetuned": 15 - wins, "tie": 1}
    assert human["preference"]["n"] == 16
    share = human["preference"]["shares"]["base"]
    assert share["share"] == pytest.approx(wins / 16) and 0 <= share["low"] < wins / 16 < share["high"] <= 1
    relevance = human["criteria"]["relevance"]
    assert relevance["base"]["n"] + relevance["finetuned"]["n"] == 30
    assert detail["summary"]["raters"] == 1
    # ratings are closed once revealed: every rating in a blind session was made blind
    r = _rate(api, body["id"], last["id"], "A")
    assert r.status_code == 409 and r.json()["error"]["code"] == "revealed"
    assert api.post(f"{URL}/{body['id']}/prompts", {"prompts": ["more"]}, format="json").status_code == 409


def test_several_raters_their_agreement_and_viewers_when_the_team_allows(api, eval_adapter, user):
    team = personal_team(user)
    bob, vic = make_user("bob"), make_user("vic")
    team_member_add(team=team, user=bob)
    team_member_add(team=team, user=vic, role=Membership.Role.VIEWER)
    body = _create(api, eval_adapter, comparison_type="blind", raters_required=2,
                   test_prompts=["One?", "Two?", "Three?", "Four?"])
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    ids = [c["id"] for c in body["comparisons"]]
    bob_api, vic_api = api_client_for(bob), api_client_for(vic)
    r = _rate(vic_api, body["id"], ids[0], "A")
    assert r.status_code == 403 and "viewers_rate_evaluations" in r.json()["error"]["message"]
    team.viewers_rate_evaluations = True
    team.save(update_fields=["viewers_rate_evaluations"])
    for i, cid in enumerate(ids):
        assert _rate(api, body["id"], cid, "A").status_code == 201
        assert _rate(bob_api, body["id"], cid, "A" if i < 3 else "B").status_code == 201
    summary = api.get(f"{URL}/{body['id']}").json()["summary"]
    assert summary["revealed"] is True and summary["raters"] == 2 and summary["ratings"] == 8
    agreement = summary["human"]["agreement"]
    assert agreement["units"] == 4 and agreement["percent_agreement"] == pytest.approx(0.75)
    assert vic_api.delete(f"{URL}/{body['id']}").status_code == 403  # viewers still write nothing else
    assert ComparisonRating.objects.filter(rater=vic).count() == 0


def test_rating_input_is_checked_and_a_rating_can_be_replaced(api, eval_adapter):
    body = _create(api, eval_adapter, test_prompts=["Hi?"])
    cid = body["comparisons"][0]["id"]
    r = _rate(api, body["id"], cid, "A")
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"  # not run yet
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    assert _rate(api, body["id"], cid, "C").json()["error"]["details"] == {"preferred": "must be \"A\", \"B\" or "
                                                                                        "\"tie\", got 'C'"}
    e = _rate(api, body["id"], cid, "A", ratings={"A": {"relevance": 6}}).json()["error"]
    assert "ratings.A.relevance" in e["details"]
    e = _rate(api, body["id"], cid, "A", ratings={"A": {"charm": 3}}).json()["error"]
    assert "ratings.A.charm" in e["details"] and "relevance" in e["message"]
    assert _rate(api, body["id"], 999_999, "A").status_code == 404
    assert _rate(api, body["id"], cid, "B", reason="first").status_code == 201
    assert _rate(api, body["id"], cid, "A", reason="second").status_code == 201
    rating = ComparisonRating.objects.get()
    assert rating.preferred == "base" and rating.reason == "second"


def test_export_has_every_comparison_and_rating(api, eval_adapter):
    body = _create(api, eval_adapter, test_prompts=["Hi?", "Bye?"])
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    cid = body["comparisons"][0]["id"]
    _rate(api, body["id"], cid, "B", ratings={"A": {"accuracy": 3}, "B": {"accuracy": 5}}, reason="better")
    r = api.get(f"{URL}/{body['id']}/export", {"format": "csv"})
    assert r.status_code == 200 and r["Content-Type"].startswith("text/csv")
    assert f'comparison-{body["id"]}.csv' in r["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.content.decode())))
    assert [row["prompt"] for row in rows] == ["Hi?", "Bye?"]
    assert rows[0]["preferred"] == "finetuned" and rows[0]["reason"] == "better"
    assert json.loads(rows[0]["ratings"]) == {"base": {"accuracy": 3}, "finetuned": {"accuracy": 5}}
    assert rows[0]["base_response"] and float(rows[0]["finetuned_tokens_per_s"]) > 0
    data = api.get(f"{URL}/{body['id']}/export", {"format": "json"}).json()
    assert len(data["comparisons"]) == 2 and data["summary"]["human"]["preference"]["counts"]["finetuned"] == 1
    assert api.get(f"{URL}/{body['id']}/export", {"format": "xml"}).status_code == 400


def test_prompts_can_be_added_and_run_and_delete_refuses_a_running_session(api, eval_adapter):
    body = _create(api, eval_adapter, test_prompts=["First?"])
    run_session(api.post(f"{URL}/{body['id']}/run").json()["id"])
    r = api.post(f"{URL}/{body['id']}/prompts", {"prompts": ["Second?", "Third?"]}, format="json")
    assert r.status_code == 201 and r.json()["added"] == 2
    assert api.post(f"{URL}/{body['id']}/run").status_code == 202
    assert api.delete(f"{URL}/{body['id']}").status_code == 409
    run_session(body["id"])
    detail = api.get(f"{URL}/{body['id']}").json()
    assert [c["index"] for c in detail["comparisons"]] == [0, 1, 2] and detail["runs"] == 2
    assert all(c["status"] == "done" for c in detail["comparisons"])
    assert api.delete(f"{URL}/{body['id']}").status_code == 204
    assert not ComparisonSession.objects.filter(pk=body["id"]).exists()


def test_cancel_while_queued_and_a_run_resumes_with_what_is_left(api, eval_adapter):
    body = _create(api, eval_adapter, test_prompts=["a?", "b?", "c?"])
    api.post(f"{URL}/{body['id']}/run")
    r = api.post(f"{URL}/{body['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert api.post(f"{URL}/{body['id']}/cancel").status_code == 409
    # a worker that died after one comparison: the next run only does the other two
    PromptComparison.objects.filter(session_id=body["id"], index=0).update(
        status="done", base_response={"response": "kept"}, finetuned_response={"response": "kept"})
    api.post(f"{URL}/{body['id']}/run")
    run_session(body["id"])
    comparisons = api.get(f"{URL}/{body['id']}").json()["comparisons"]
    assert comparisons[0]["base_response"] == {"response": "kept"}
    assert all(c["status"] == "done" and c["base_response"]["tokens_generated"] > 0 for c in comparisons[1:])


def test_outsiders_get_404_on_sessions_comparisons_and_ratings(api, eval_adapter, outsider_api):
    body = _create(api, eval_adapter)
    cid = body["comparisons"][0]["id"]
    for method, url, data in (("get", f"{URL}/{body['id']}", None), ("delete", f"{URL}/{body['id']}", None),
                              ("post", f"{URL}/{body['id']}/run", None), ("post", f"{URL}/{body['id']}/cancel", None),
                              ("post", f"{URL}/{body['id']}/prompts", {"prompts": ["x"]}),
                              ("post", f"{URL}/{body['id']}/rate", {"comparison_id": cid, "preferred": "A"}),
                              ("get", f"{URL}/{body['id']}/export", None),
                              ("get", f"{URL}/{body['id']}/events", None)):
        r = getattr(outsider_api, method)(url, data, format="json") if data else getattr(outsider_api, method)(url)
        assert r.status_code == 404, (method, url, r.status_code)
    assert outsider_api.get(URL).json()["count"] == 0
    r = outsider_api.post(URL, {"name": "x", "adapter_id": eval_adapter.pk}, format="json")
    assert r.status_code == 400 and "no adapter" in r.json()["error"]["message"]


def test_any_two_models_a_merged_export_that_equals_the_base_answers_exactly_as_the_base(api, user, base_model,
                                                                                       eval_adapter):
    """A merged GGUF whose weights are the base model's (a zero adapter merged) must say exactly what
    the base says when both sample with the same seed: the seed is the same per prompt for both sides."""
    from adapters_app.models import AdapterExport

    export = AdapterExport.objects.create(team=eval_adapter.team, adapter=eval_adapter, kind="model_gguf",
                                          quantization="q4_1", status="completed", verified=True,
                                          path=base_model.gguf_path)
    body = {"name": "merged", "models": [{"type": "base", "base_model": base_model.name},
                                         {"type": "merged", "export_id": export.pk}],
            "test_prompts": ["Tell me a story about a dragon.", "Invent a new word and define it."],
            "sampling_params": {"max_tokens": 16, "temperature": 1.2}}
    r = api.post(URL, body, format="json")
    assert r.status_code == 201, r.content
    assert [m["type"] for m in r.json()["models"]] == ["base", "merged"]
    run_session(api.post(f"{URL}/{r.json()['id']}/run").json()["id"])
    comparisons = api.get(f"{URL}/{r.json()['id']}").json()["comparisons"]
    assert len(comparisons) == 2
    for c in comparisons:
        assert c["finetuned_response"]["model_id"] == f"merged:{export.pk}"
        assert c["base_response"]["response"] == c["finetuned_response"]["response"]
    AdapterExport.objects.filter(pk=export.pk).update(status="running", verified=False)
    r = api.post(URL, body, format="json")
    assert r.status_code == 409 and "models[1].export_id" in r.json()["error"]["details"]
