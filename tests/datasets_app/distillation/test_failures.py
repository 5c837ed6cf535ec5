"""What a distillation job does when teachers misbehave, through the API and the job kit's run,
against the local OpenAI/Anthropic server: rate limits, server errors, wrong keys and models,
refusals and other unusable answers, duplicates, the judge, several teachers, augmentation modes,
the request rate, and a teacher that goes away mid-run."""
from __future__ import annotations

import hashlib
import time

import pytest

from datasets_app.distillation import runner
from datasets_app.distillation.models import DistillationItem
from nexus.jobs import TransientError, is_transient
from tests.datasets_app.distillation.conftest import (
    JUDGE_MODEL,
    anthropic_teacher,
    openai_teacher,
    varied_answer,
)
from tests.datasets_app.distillation.support import (
    API,
    JobThread,
    create_job,
    items,
    job,
    job_body,
    run_task,
    wait_until,
)
from tests.factories import make_ready_dataset

pytestmark = pytest.mark.django_db
TEACHERS = pytest.mark.parametrize("make_teacher", [openai_teacher, anthropic_teacher], ids=["openai", "anthropic"])
PROMPTS = [f"Explain topic number {i} of the course in a few sentences." for i in range(6)]


@pytest.fixture
def quick_backoff(monkeypatch):
    """Backoff between retries of a failing call in tens of milliseconds instead of seconds."""
    plan_of = runner._plan

    def plan(*args, **kwargs):
        made = plan_of(*args, **kwargs)
        made.backoff_base_s, made.backoff_cap_s = 0.02, 0.1
        return made

    monkeypatch.setattr(runner, "_plan", plan)


def reasons(api, job_id: int) -> dict[str, str]:
    """prompt -> the reason it was rejected ("" when accepted)."""
    return {i["prompt"]: i["reason"] for i in items(api, job_id)}


def generations(teacher) -> list[dict]:
    return [r for r in teacher.requests if r["path"] in ("/v1/chat/completions", "/v1/messages")]


# -- the provider says wait, or fails -------------------------------------------------------------


def test_a_429_with_retry_after_pauses_every_request_for_that_long(api, teacher):
    teacher.latency_s = 0.3
    teacher.script = ["ok", "ok", ("rate_limit", 2)]  # the third of the first three at once
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS, batch_size=3, rate_limit=6000))
    assert run_task(created["id"]) is None
    row = job(created["id"])
    assert (row.status, row.accepted, row.requests) == ("completed", 6, 7)
    calls = sorted(generations(teacher), key=lambda r: r["time"])
    (limited,) = [r for r in calls if r["status"] == 429]
    # a request the limiter released before the client had read the 429 can still arrive just after
    # it (seen on a slow machine): it was on its way, as the two answers were
    on_way = [r for r in calls if limited["ended"] < r["time"] < limited["ended"] + 0.25]
    later = [r for r in calls if r["time"] >= limited["ended"] + 0.25]
    assert len(on_way) <= 1 and len(on_way) + len(later) == 4
    assert min(r["time"] for r in later) >= limited["ended"] + 2.0
    events = [e["message"] for e in api.get(f"{API}/jobs/{row.pk}/events").json()["results"]]
    assert any("429" in m and "all requests wait 2.0 s" in m for m in events), events


@pytest.mark.parametrize("make_teacher,script", [
    (openai_teacher, ["error500", "overloaded", "ok"]),  # OpenAI's overload is a 503
    (anthropic_teacher, ["overloaded", "disconnect", "ok"]),  # Anthropic's a 529
], ids=["openai", "anthropic"])
def test_server_errors_overload_and_cut_connections_are_retried_with_backoff_then_succeed(api, teacher, make_teacher,
                                                                                          script):
    teacher.script = script
    created = create_job(api, job_body(make_teacher(teacher), PROMPTS[:1], batch_size=1))
    assert run_task(created["id"]) is None
    row = job(created["id"])
    assert (row.status, row.accepted, row.requests) == ("completed", 1, 3)
    first, second, third = sorted(r["time"] for r in generations(teacher))
    assert second - first >= 0.5 and third - second >= 1.0  # half to all of 1 s, then of 2 s
    assert teacher.repeated_prompts() == {}  # one answer bought


@pytest.mark.django_db(transaction=True)
def test_a_cancel_during_a_long_retry_after_pause_stops_the_job_within_seconds(api, teacher, monkeypatch):
    from nexus import tasks

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda *a, **kw: None)
    teacher.script = [("rate_limit", 300)]
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS, batch_size=1))
    runner_thread = JobThread(created["id"])
    runner_thread.start()
    wait_until(lambda: teacher.count(status=429) == 1, 10, "the 429")
    time.sleep(0.5)
    asked = time.monotonic()
    assert api.delete(f"{API}/jobs/{created['id']}").status_code == 202
    runner_thread.join(timeout=10)
    assert not runner_thread.is_alive() and runner_thread.ended_at - asked < 3
    assert job(created["id"]).status == "cancelled" and teacher.count() == 1


@TEACHERS
def test_a_wrong_key_fails_the_job_at_once_after_one_request(api, teacher, make_teacher):
    # as many at once as the batch allows, and no pacing to speak of: still one request
    body = job_body(make_teacher(teacher, api_key="sk-this-is-not-the-key-0000"), PROMPTS, batch_size=5,
                    rate_limit=100_000)
    created = create_job(api, body)
    started = time.monotonic()
    error = run_task(created["id"])
    assert error is not None and not is_transient(error)
    assert time.monotonic() - started < 5
    row = job(created["id"])
    assert row.status == "failed" and "API key" in row.error_message and "401" in row.error_message
    assert teacher.count() == 1
    detail = api.get(f"{API}/jobs/{row.pk}").json()
    assert detail["status"] == "failed" and detail["error"] == row.error_message and detail["requests"] == 1
    assert row.items.filter(status="pending").count() == 6  # nothing judged: the prompts are kept


@TEACHERS
def test_an_unknown_model_fails_the_job_at_once_after_one_request(api, teacher, make_teacher):
    body = job_body(make_teacher(teacher, model="gpt-9-ultra"), PROMPTS, batch_size=5, rate_limit=100_000)
    created = create_job(api, body)
    assert run_task(created["id"]) is not None
    row = job(created["id"])
    assert row.status == "failed" and "'gpt-9-ultra' does not exist" in row.error_message
    assert teacher.count() == 1


# -- unusable answers -----------------------------------------------------------------------------


@TEACHERS
def test_refusals_empty_and_cut_off_answers_are_rejected_with_their_reasons(api, teacher, make_teacher):
    teacher.script = ["refusal", "empty", "cut_off", "ok"]
    created = create_job(api, job_body(make_teacher(teacher), PROMPTS[:4], batch_size=1))
    assert run_task(created["id"]) is None
    assert list(reasons(api, created["id"]).values()) == ["refusal", "empty", "cut_off", ""]
    row = job(created["id"])
    assert (row.status, row.accepted, row.rejected) == ("completed", 1, 3)
    assert row.requests == 4  # an unusable answer is the item's verdict, not a reason to ask again
    counts = api.get(f"{API}/jobs/{row.pk}").json()["counts"]
    assert counts["rejected_by_reason"] == {"refusal": 1, "empty": 1, "cut_off": 1}


SHORT = "Name the largest planet of the solar system, please."
FRENCH = "Please describe in a few sentences how the water cycle works on our planet."


def answers_in_the_wrong_shape(messages, model):
    prompt = messages[-1]["content"]
    if prompt == SHORT:
        return "Jupiter."
    if prompt == FRENCH:
        return ("Le cycle de l'eau décrit le mouvement continu de l'eau sur la Terre : l'eau des océans s'évapore, "
                "forme des nuages, puis retombe en pluie sur les continents avant de rejoindre la mer.")
    return varied_answer(messages, model)


def test_too_short_and_wrong_language_answers_are_rejected(api, teacher):
    teacher.responder = answers_in_the_wrong_shape
    created = create_job(api, job_body(openai_teacher(teacher), [SHORT, FRENCH, PROMPTS[0]]))
    assert run_task(created["id"]) is None
    assert reasons(api, created["id"]) == {SHORT: "too_short", FRENCH: "language", PROMPTS[0]: ""}
    (french,) = items(api, created["id"], reason="language")
    assert "'fr'" in french["detail"]


LONG = ("A hash map stores values under keys: it hashes each key to pick one of many buckets, so finding a "
        "value takes about the same time however many entries the map holds, and collisions are resolved "
        "by chaining or probing.")


def echoing_and_repeating(messages, model):
    prompt = messages[-1]["content"]
    return {"Question A?": LONG, "Question B?": LONG, "Question C?": LONG.replace("chaining", "linking"),
            "Repeat after me: the quick brown fox jumps over the lazy dog.":
                "Repeat after me: the quick brown fox jumps over the lazy dog."}.get(prompt) \
        or varied_answer(messages, model)


def test_exact_and_near_duplicates_and_echoes_of_the_prompt_are_rejected(api, teacher):
    teacher.responder = echoing_and_repeating
    prompts = ["Question A?", "Question B?", "Question C?",
               "Repeat after me: the quick brown fox jumps over the lazy dog.", PROMPTS[0]]
    created = create_job(api, job_body(openai_teacher(teacher), prompts, batch_size=2))
    assert run_task(created["id"]) is None
    assert list(reasons(api, created["id"]).values()) == ["", "duplicate", "near_duplicate", "echo", ""]
    near = items(api, created["id"], reason="near_duplicate")[0]
    first = items(api, created["id"])[0]
    assert f"#{first['id']}" in near["detail"]


# -- the judge, several teachers, reasoning -------------------------------------------------------


def test_a_judge_below_the_quality_threshold_rejects_the_answer(api, teacher):
    prompts = ["Explain recursion. LOWSCORE", "Explain iteration clearly.", "Explain closures. LOWSCORE"]
    body = job_body(openai_teacher(teacher), prompts, quality_threshold=0.5,
                    judge_config=openai_teacher(teacher, model=JUDGE_MODEL))
    created = create_job(api, body)
    assert sorted(t["role"] for t in created["teachers"]) == ["judge", "teacher"]
    assert run_task(created["id"]) is None
    by_prompt = {i["prompt"]: i for i in items(api, created["id"])}
    assert by_prompt[prompts[0]]["reason"] == "judge" and by_prompt[prompts[0]]["score"] == pytest.approx(1 / 9)
    assert "below the threshold 0.50" in by_prompt[prompts[0]]["detail"]
    assert by_prompt[prompts[1]]["status"] == "accepted" and by_prompt[prompts[1]]["score"] == pytest.approx(8 / 9)
    assert by_prompt[prompts[1]]["judge_reason"] == "judged by the fake"
    assert [r["model"] for r in generations(teacher)].count(JUDGE_MODEL) == 3
    detail = api.get(f"{API}/jobs/{created['id']}").json()
    assert {t["role"]: t["requests"] for t in detail["teachers"]} == {"teacher": 3, "judge": 3}


def mini_scores_low(messages, model):
    """gpt-4o-mini's answers carry the word the fake judge scores 2; gpt-4o's are scored 9."""
    text = varied_answer(messages, model)
    return f"{text} LOWSCORE" if model == "gpt-4o-mini" else text


def test_best_of_several_teachers_keeps_the_best_judged_answer_of_each_prompt(api, teacher):
    teacher.responder = mini_scores_low
    body = job_body(None, PROMPTS[:3], multi_teacher="best", judge_config=openai_teacher(teacher, model=JUDGE_MODEL),
                    teacher_configs=[openai_teacher(teacher), openai_teacher(teacher, model="gpt-4o")])
    del body["teacher_config"]
    created = create_job(api, body)
    assert created["num_items"] == 6
    assert run_task(created["id"]) is None
    rows = items(api, created["id"])
    kept = [i for i in rows if i["status"] == "accepted"]
    assert sorted(i["group"] for i in kept) == [0, 1, 2] and {i["teacher"] for i in kept} == {"openai:gpt-4o"}
    assert {i["reason"] for i in rows if i["status"] == "rejected"} == {"not_best"}
    assert (job(created["id"]).accepted, job(created["id"]).rejected) == (3, 3)


def test_round_robin_alternates_teachers(api, teacher):
    body = job_body(None, PROMPTS[:4], multi_teacher="round_robin",
                    teacher_configs=[openai_teacher(teacher), anthropic_teacher(teacher)])
    del body["teacher_config"]
    created = create_job(api, body)
    assert created["num_items"] == 4
    assert run_task(created["id"]) is None
    asked = {r["prompt"]: r["model"] for r in generations(teacher)}
    assert [asked[p] for p in PROMPTS[:4]] == ["gpt-4o-mini", "claude-haiku-4-5"] * 2
    assert [i["teacher"] for i in items(api, created["id"])] == ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"] * 2
    assert job(created["id"]).accepted == 4


def reasons_first(messages, model):
    prompt = messages[-1]["content"]
    return (f"<reasoning>First I read the question: {prompt} Then I work it out step by step.</reasoning>\n"
            + varied_answer(messages, model))


def test_include_reasoning_keeps_the_teachers_reasoning_in_the_record(api, teacher):
    teacher.responder = reasons_first
    body = job_body(openai_teacher(teacher), PROMPTS[:2])
    body["prompts_config"]["include_reasoning"] = True
    created = create_job(api, body)
    assert run_task(created["id"]) is None
    first = items(api, created["id"])[0]
    assert first["status"] == "accepted"
    assert first["record"]["reasoning"].startswith("First I read the question")
    assert first["record"]["output"].startswith("First I read the question")  # steps, then the answer
    assert "Here is what gpt-4o-mini thinks" in first["record"]["output"]
    system = generations(teacher)[0]["messages"][0]
    assert system["role"] == "system" and "<reasoning>" in system["content"]


# -- augmentation of a dataset ----------------------------------------------------------------------


def _words(seed: str, n: int) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    vocabulary = "ship sail anchor crew harbour storm compass island treasure parrot cannon deck mast".split()
    return " ".join(vocabulary[b % len(vocabulary)] for b in digest[:n])


def augmenter(messages, model):
    """Answers each augmentation step in the shape its system prompt asks for, distinct per record."""
    system, user = messages[0]["content"], messages[-1]["content"]
    words = _words(user, 12)
    if "rewrite instructions" in system:
        return f"Could you tell me, in pirate terms, about {words}?"
    if "improve answers" in system:
        return f"Step one: think of {words}. Step two: put it together. So the answer stands as given."
    if "contrast examples" in system:
        return f"<wrong_answer>The answer is {words}.</wrong_answer>\n<explanation>No, that mixes up {words}.</explanation>"
    if "into French" in system:
        return f"Dites-moi, à propos de {words}, ce que vous savez."
    if "into English" in system:
        return f"Tell me what you know about {words}, matey."
    raise AssertionError(system)


@pytest.mark.parametrize("mode", ["rephrase", "expand", "negative", "back_translate"])
def test_augmentation_modes_rewrite_each_dataset_record(api, user, teacher, mode):
    teacher.responder = augmenter
    dataset = make_ready_dataset(user)
    body = job_body(openai_teacher(teacher), mode=mode, prompts_config={"dataset_id": dataset.pk})
    created = create_job(api, body)
    assert created["num_items"] == 8
    assert run_task(created["id"]) is None
    row = job(created["id"])
    assert (row.status, row.accepted) == ("completed", 8), reasons(api, row.pk)
    assert row.requests == (16 if mode == "back_translate" else 8)
    record = items(api, row.pk)[0]["record"]
    source = DistillationItem.objects.filter(job=row).order_by("group").first()
    if mode in ("rephrase", "back_translate"):
        assert record["output"] == source.reference and record["instruction"] != source.prompt
    elif mode == "expand":
        assert record["instruction"] == source.prompt and record["output"].startswith("Step one")
    else:
        assert record["rejected"].startswith("The answer is") and record["output"].startswith("No, that mixes up")
    r = api.post(f"{API}/jobs/{row.pk}/approve", {}, format="json")
    assert r.status_code == 201 and r.json()["origin"]["mode"] == mode


def test_a_malformed_negative_reply_rejects_that_item_only_even_with_a_judge(api, user, teacher):
    def sometimes_malformed(messages, model):
        if model == JUDGE_MODEL:
            return varied_answer(messages, model)
        return "I would rather just answer plainly." if "Parrot" in messages[-1]["content"] else augmenter(messages, model)

    teacher.responder = sometimes_malformed
    records = [{"instruction": f"Tell me about the {name}.", "output": f"The {name} is a fine thing aboard, matey."}
               for name in ("Parrot", "Anchor", "Compass")]
    dataset = make_ready_dataset(user, records=records)
    body = job_body(openai_teacher(teacher), mode="negative", prompts_config={"dataset_id": dataset.pk},
                    quality_threshold=0.5, judge_config=openai_teacher(teacher, model=JUDGE_MODEL))
    created = create_job(api, body)
    assert run_task(created["id"]) is None
    row = job(created["id"])
    assert (row.status, row.accepted, row.rejected) == ("completed", 2, 1)
    assert reasons(api, row.pk)["Tell me about the Parrot."] == "malformed"


# -- the request rate -------------------------------------------------------------------------------


def test_no_more_requests_in_flight_than_the_batch_size(api, teacher):
    teacher.latency_s = 0.3
    created = create_job(api, job_body(openai_teacher(teacher), [f"Prompt {i} about things." for i in range(12)],
                                       batch_size=3, rate_limit=6000))
    assert run_task(created["id"]) is None
    assert teacher.max_in_flight == 3
    assert job(created["id"]).accepted == 12


@pytest.mark.django_db(transaction=True)
def test_never_more_requests_in_a_minute_than_the_rate_limit_even_across_a_resume(api, teacher, monkeypatch):
    """rate_limit 6: six attempts of an earlier run 58 s ago hold the next one back for about 2 s;
    then starts are paced, one every 10 s."""
    from nexus import tasks
    from nexus.control import redis_client

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda *a, **kw: None)
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS, batch_size=3, rate_limit=6))
    earlier = time.time() - 58
    seeded = [earlier + 0.1 * i for i in range(6)]
    key = runner._attempts_key(created["id"])
    redis_client(runner.settings.NEXUS_CONTROL_REDIS_URL).zadd(key, {f"{t:.6f}:seed{i}": t for i, t in enumerate(seeded)})
    runner_thread = JobThread(created["id"])
    runner_thread.start()
    try:
        wait_until(lambda: teacher.count() >= 2, 16, "two requests")
    finally:
        api.delete(f"{API}/jobs/{created['id']}")
        runner_thread.join(timeout=10)
    first, second = teacher.times()[:2]
    assert first >= seeded[0] + 60  # the earlier run's six were still in the window
    assert second - first >= 60 / 6  # paced: one every window / rate_limit
    every = sorted(seeded + teacher.times())
    assert max(sum(1 for t in every if start <= t < start + 60) for start in every) <= 6
    assert teacher.max_in_flight == 1
    assert job(created["id"]).status == "cancelled"


# -- a teacher that goes away -------------------------------------------------------------------------


def test_a_teacher_that_disappears_mid_run_interrupts_it_and_a_retry_finishes_without_asking_twice(
        api, teacher, quick_backoff):
    import threading

    prompts = [f"Explain idea number {i} to a new colleague." for i in range(10)]
    teacher.latency_s = 0.1

    def vanish_after_four(record):
        if record["n"] == 5:
            threading.Thread(target=teacher.stop, daemon=True).start()
        return "ok"

    teacher.script = vanish_after_four
    created = create_job(api, job_body(openai_teacher(teacher), prompts, batch_size=2, rate_limit=6000))
    error = run_task(created["id"], worker="w1@host")
    assert isinstance(error, TransientError) and "could not connect" in str(error)
    row = job(created["id"])
    assert row.status == "running" and row.worker == "w1@host"  # held for the kit's retry
    answered = teacher.count(status=200)
    assert 3 <= answered <= 5
    assert DistillationItem.objects.filter(job=row).exclude(calls={}).count() == answered  # stored as they came

    teacher.script = []
    teacher.start()
    started = time.monotonic()
    assert run_task(created["id"], worker="w2@host", held_by="w1@host") is None
    assert time.monotonic() - started < 10
    row = job(created["id"])
    assert (row.status, row.accepted) == ("completed", 10)
    assert teacher.repeated_prompts() == {}
    assert {r["prompt"] for r in generations(teacher) if r["status"] == 200} == set(prompts)
    messages = [e["message"] for e in api.get(f"{API}/jobs/{row.pk}/events").json()["results"]]
    assert any(m.startswith("Resuming:") for m in messages)
