"""The distillation REST API (design 7.2 and 7.5) against the local OpenAI/Anthropic server: teacher
forms and the outbound-address policy, saved connections and their test, jobs from prompts, a
dataset or a template, cancel, preview, review, approve, and bad input named down to the field."""
from __future__ import annotations

import functools
import socket
import time

import pytest

from datasets_app.distillation import services
from datasets_app.distillation.engine import hosts
from datasets_app.distillation.models import DistillationItem, DistillationJob, TeacherConnection
from datasets_app.models import Dataset
from tests.datasets_app.distillation.conftest import KEY, anthropic_teacher, openai_teacher, varied_answer
from tests.datasets_app.distillation.support import (
    API,
    JobThread,
    create_job,
    error_of,
    items,
    job,
    job_body,
    run_task,
    wait_until,
)
from tests.factories import make_ready_dataset

pytestmark = pytest.mark.django_db
PROMPTS = ["What is 15% of 80?", "Name three primary colours.", "Explain what a hash map is.",
           "Write a haiku about the sea.", "How do vaccines train the immune system?"]


def resolving(addresses: dict[str, str], monkeypatch) -> None:
    """DNS as the test says (the sandbox has none): each name to one address."""

    def resolve(host, port, type=0, **kw):  # noqa: A002 - getaddrinfo's own keyword
        if host not in addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (addresses[host], port))]

    monkeypatch.setattr(services, "check_teacher_address",
                        functools.partial(hosts.check_teacher_address, resolve=resolve))


# -- teachers -----------------------------------------------------------------------------------


def test_the_design_example_body_is_accepted_as_an_openai_teacher_with_a_template(api, monkeypatch):
    resolving({"api.openai.com": "104.18.7.192"}, monkeypatch)
    body = {  # design section 7.5, "Start Distillation Job", as written
        "name": "gpt4-distillation-coding",
        "teacher_config": {"model": "gpt-4-turbo", "api_key": "sk-...", "temperature": 0.7, "max_tokens": 2048},
        "prompts_config": {"template_id": "coding-assistant", "num_examples": 5000, "include_reasoning": True},
        "output_format": "sharegpt",
    }
    started = time.monotonic()
    created = create_job(api, body)
    assert time.monotonic() - started < 10
    assert created["status"] == "queued" and created["output_format"] == "sharegpt"
    (teacher,) = created["teachers"]
    assert (teacher["provider"], teacher["model"], teacher["base_url"]) == ("openai", "gpt-4-turbo", "")
    assert (teacher["temperature"], teacher["max_tokens"]) == (0.7, 2048)
    # every combination of the template is a prompt; the teacher writes the rest (self-instruct)
    assert created["num_prompts"] + created["prompts_to_generate"] == 5000
    assert created["num_prompts"] == created["num_items"] > 100
    assert created["config"]["include_reasoning"] is True
    assert created["config"]["source"]["template_id"] == "coding-assistant"
    assert "I'm working in" in items(api, created["id"], limit=1)[0]["prompt"]


@pytest.mark.parametrize("model,base_url,provider", [
    ("gpt-4o-mini", "openai_base_url", "openai"),
    ("claude-haiku-4-5", "anthropic_base_url", "anthropic"),
])
def test_a_teacher_without_provider_is_known_by_its_model_name_and_runs(api, teacher, model, base_url, provider):
    config = {"model": model, "api_key": KEY, "base_url": getattr(teacher, base_url), "max_tokens": 128}
    created = create_job(api, job_body(config))
    assert created["teachers"][0]["provider"] == provider
    assert run_task(created["id"]) is None
    assert job(created["id"]).status == "completed"
    assert {r["api"] for r in teacher.requests} == {provider}


def test_a_base_url_off_the_allowed_hosts_is_refused_naming_the_field(api, teacher, settings):
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com"
    r = api.post(f"{API}/jobs", job_body(openai_teacher(teacher)), format="json")
    assert r.status_code == 400
    error = error_of(r)
    assert error["message"].startswith("teacher_config.base_url: ") and "127.0.0.1" in error["message"]
    assert "teacher_config.base_url" in error["details"]

    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com,127.0.0.1"
    body = job_body(None, teacher_configs=[openai_teacher(teacher),
                                           openai_teacher(teacher, base_url="http://internal.example:8080/v1")])
    del body["teacher_config"]
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("teacher_configs[1].base_url: ")

    body = job_body(openai_teacher(teacher), quality_threshold=0.5,
                    judge_config=openai_teacher(teacher, base_url="http://169.254.169.254/latest"))
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("judge_config.base_url: ")
    assert not DistillationJob.objects.exists()


@pytest.mark.parametrize("address", ["10.0.0.5", "127.0.0.1", "169.254.169.254", "192.168.1.20"])
def test_a_provider_host_resolving_to_an_internal_address_is_refused(api, monkeypatch, settings, address):
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com"  # the defaults
    resolving({"api.openai.com": address}, monkeypatch)
    body = job_body({"provider": "openai", "model": "gpt-4o-mini", "api_key": KEY})  # no base_url: OpenAI's own
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400
    assert error_of(r)["message"].startswith("teacher_config.base_url: ") and address in error_of(r)["message"]
    r = api.post(f"{API}/connections/test", {"model": "gpt-4o-mini", "api_key": KEY}, format="json")
    assert r.status_code == 400 and "base_url" in error_of(r)["message"]


def test_a_name_resolving_to_an_internal_address_is_refused_unless_the_address_is_listed(api, teacher, monkeypatch,
                                                                                          settings):
    resolving({"llm.internal": "10.1.2.3"}, monkeypatch)
    body = job_body(openai_teacher(teacher, base_url="http://llm.internal:8000/v1"))
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400 and "is not on NEXUS_TEACHER_ALLOWED_HOSTS" in error_of(r)["message"]
    settings.NEXUS_TEACHER_ALLOWED_HOSTS += ",llm.internal:8000"
    r = api.post(f"{API}/jobs", body, format="json")  # a listed name may be re-pointed by its DNS
    assert r.status_code == 400 and error_of(r)["message"].startswith("teacher_config.base_url: ")
    assert "10.1.2.3" in error_of(r)["message"]
    settings.NEXUS_TEACHER_ALLOWED_HOSTS += ",10.1.2.3"
    assert api.post(f"{API}/jobs", body, format="json").status_code == 201  # the operator's choice


def test_a_host_dropped_from_the_list_after_creation_fails_the_run_before_any_request(api, teacher, settings):
    created = create_job(api, job_body(openai_teacher(teacher)))
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com"
    assert run_task(created["id"]) is not None
    row = job(created["id"])
    assert row.status == "failed" and "teacher_config.base_url" in row.error_message
    assert teacher.count() == 0


# -- saved connections ----------------------------------------------------------------------------


def _connection(api, teacher, **extra) -> dict:
    body = {"name": "fake openai", "provider": "openai", "model": "gpt-4o-mini", "api_key": KEY,
            "base_url": teacher.openai_base_url, **extra}
    r = api.post(f"{API}/connections", body, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def test_connections_are_created_listed_changed_and_deleted_without_ever_showing_the_key(api, teacher):
    conn = _connection(api, teacher)
    assert conn["key_last4"] == KEY[-4:] and "api_key" not in conn
    listed = api.get(f"{API}/connections").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == conn["id"]
    r = api.patch(f"{API}/connections/{conn['id']}", {"temperature": 0.1, "name": "renamed"}, format="json")
    assert r.status_code == 200 and r.json()["name"] == "renamed" and r.json()["temperature"] == 0.1
    assert r.json()["key_last4"] == KEY[-4:]  # the key is kept when none is given
    assert api.post(f"{API}/connections/{conn['id']}/test").json()["ok"] is True
    assert KEY not in str(listed) and KEY not in r.content.decode()
    r = api.post(f"{API}/connections", {"name": "renamed", "model": "gpt-4o", "api_key": KEY,
                                        "base_url": teacher.openai_base_url}, format="json")
    assert r.status_code == 409 and error_of(r)["message"].startswith("name: ")
    assert api.delete(f"{API}/connections/{conn['id']}").status_code == 204
    assert api.get(f"{API}/connections/{conn['id']}").status_code == 404


def test_testing_a_saved_connection_says_what_is_wrong(api, teacher):
    conn = _connection(api, teacher)
    url = f"{API}/connections/{conn['id']}/test"
    r = api.post(url)
    assert r.status_code == 200 and r.json()["ok"] is True and "gpt-4o-mini" in r.json()["message"]
    assert TeacherConnection.objects.get(pk=conn["id"]).last_check["ok"] is True

    api.patch(f"{API}/connections/{conn['id']}", {"api_key": "sk-wrong-key-0000"}, format="json")
    result = api.post(url).json()
    assert (result["ok"], result["problem"]) == (False, "key") and "wrong api key" in result["message"].lower()

    api.patch(f"{API}/connections/{conn['id']}", {"api_key": KEY, "model": "gpt-9-ultra"}, format="json")
    result = api.post(url).json()
    assert (result["ok"], result["problem"]) == (False, "model") and "gpt-9-ultra" in result["message"]

    api.patch(f"{API}/connections/{conn['id']}", {"model": "gpt-4o-mini"}, format="json")
    teacher.stop()
    result = api.post(url).json()
    assert (result["ok"], result["problem"]) == (False, "unreachable") and "127.0.0.1" in result["message"]
    assert TeacherConnection.objects.get(pk=conn["id"]).last_check["problem"] == "unreachable"


def test_testing_an_unsaved_teacher_body(api, teacher):
    url = f"{API}/connections/test"
    assert api.post(url, openai_teacher(teacher), format="json").json()["ok"] is True
    assert api.post(url, anthropic_teacher(teacher), format="json").json()["ok"] is True
    result = api.post(url, openai_teacher(teacher, api_key="sk-not-the-key-1234"), format="json").json()
    assert result["problem"] == "key" and "wrong api key" in result["message"].lower()
    result = api.post(url, anthropic_teacher(teacher, model="claude-nonexistent"), format="json").json()
    assert result["problem"] == "model"
    assert not TeacherConnection.objects.exists()


def test_a_job_uses_a_saved_connection_by_id(api, teacher):
    conn = _connection(api, teacher)
    created = create_job(api, job_body({"connection_id": conn["id"], "max_tokens": 64}))
    assert created["teachers"][0]["connection_id"] == conn["id"]
    assert created["teachers"][0]["max_tokens"] == 64
    assert run_task(created["id"]) is None
    assert job(created["id"]).accepted == 2


# -- jobs ---------------------------------------------------------------------------------------


def test_a_job_from_prompts_is_listed_and_its_detail_has_status_progress_counts_tokens_and_cost(api, teacher):
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS))
    listed = api.get(f"{API}/jobs").json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == created["id"]
    assert listed["results"][0]["status"] == "queued" and listed["results"][0]["progress"] == 0.0
    assert run_task(created["id"]) is None
    detail = api.get(f"{API}/jobs/{created['id']}").json()
    assert (detail["status"], detail["progress"], detail["error"]) == ("completed", 100.0, "")
    assert (detail["accepted"], detail["rejected"], detail["generated"], detail["requests"]) == (5, 0, 5, 5)
    assert detail["tokens_in"] > 0 and detail["tokens_out"] > 0
    assert detail["cost_usd"] > 0 and detail["cost_known"] is True  # gpt-4o-mini is in the price table
    assert detail["counts"]["accepted"] == 5 and detail["counts"]["teachers"][0]["requests"] == 5
    assert detail["started_at"] and detail["completed_at"]
    r = api.delete(f"{API}/jobs/{created['id']}")
    assert r.status_code == 409 and "already ended" in error_of(r)["message"]


def test_a_job_from_a_dataset_asks_the_teacher_each_record_prompt(api, user, teacher):
    dataset = make_ready_dataset(user)
    body = job_body(openai_teacher(teacher), prompts_config={"dataset_id": dataset.pk})
    created = create_job(api, body)
    assert created["num_prompts"] == dataset.num_examples == 8
    assert run_task(created["id"]) is None
    assert job(created["id"]).accepted == 8
    asked = {r["prompt"] for r in teacher.requests}
    assert {i["prompt"] for i in items(api, created["id"])} == asked and len(asked) == 8


def test_a_job_from_the_builtin_coding_template_with_variables(api, teacher):
    body = job_body(openai_teacher(teacher))
    body["prompts_config"] = {"template_id": "coding-assistant", "num_examples": 3,
                              "variables": {"language": ["Python"], "task": ["write unit tests"],
                                            "topic": ["parsing a CSV file", "reading a file", "sorting a list"]}}
    created = create_job(api, body)
    assert (created["num_prompts"], created["prompts_to_generate"]) == (3, 0)
    assert run_task(created["id"]) is None
    prompts = [r["prompt"] for r in teacher.requests]
    assert len(prompts) == 3 and all(p.startswith("I'm working in Python. Could you write unit tests for") for p in prompts)
    system = teacher.requests[0]["messages"][0]
    assert system["role"] == "system" and "software engineer" in system["content"]


def writes_numbered_requests(messages, model):
    """Asked to write N new requests (self-instruct), the fake answers with N numbered ones."""
    import re

    asked = re.search(r"Write (\d+) new, diverse requests", messages[-1]["content"])
    if asked:
        n = int(asked.group(1))
        return "\n".join(f"{i}. How do I sort a list of {thing} in Python?" for i, thing in
                         zip(range(1, n + 1), ["dates", "tuples", "strings", "objects", "numbers", "dicts"]))
    return varied_answer(messages, model)


def test_a_template_with_fewer_combinations_than_asked_has_the_teacher_write_the_rest(api, teacher):
    teacher.responder = writes_numbered_requests
    template = api.post(f"{API}/templates", {"name": "Sorting", "prompt": "Sort {what} in Python, please.",
                                             "variables": {"what": ["words", "files"]}}, format="json").json()
    body = job_body(openai_teacher(teacher))
    body["prompts_config"] = {"template_id": template["id"], "num_examples": 6}
    created = create_job(api, body)
    assert (created["num_prompts"], created["prompts_to_generate"]) == (2, 4)
    assert run_task(created["id"]) is None
    row = job(created["id"])
    assert (row.status, row.num_prompts, row.prompts_to_generate, row.accepted) == ("completed", 6, 0, 6)
    assert row.requests == 7  # one call wrote the four prompts, then one answer each
    prompts = {i["prompt"] for i in items(api, row.pk)}
    assert {"Sort words in Python, please.", "How do I sort a list of dates in Python?"} <= prompts
    assert api.get(f"{API}/jobs/{row.pk}").json()["progress"] == 100.0


def test_a_team_may_have_only_so_many_active_jobs(api, teacher, settings):
    settings.NEXUS_QUOTA_ACTIVE_DISTILLATIONS = 2
    first = create_job(api, job_body(openai_teacher(teacher)))
    create_job(api, job_body(openai_teacher(teacher)))
    r = api.post(f"{API}/jobs", job_body(openai_teacher(teacher)), format="json")
    assert r.status_code == 429 and error_of(r)["code"] == "quota_exceeded"
    api.delete(f"{API}/jobs/{first['id']}")
    create_job(api, job_body(openai_teacher(teacher)))


def test_cancelling_a_queued_job_ends_it_at_once(api, teacher):
    created = create_job(api, job_body(openai_teacher(teacher)))
    r = api.delete(f"{API}/jobs/{created['id']}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    r = api.delete(f"{API}/jobs/{created['id']}")
    assert r.status_code == 409
    assert teacher.count() == 0


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_job_stops_it_within_seconds(api, teacher, monkeypatch):
    from nexus import tasks

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda *a, **kw: None)  # no broker: this test runs it
    teacher.latency_s = 0.2
    teacher.script = ["ok", "ok"] + [("slow", 15)] * 50
    created = create_job(api, job_body(openai_teacher(teacher), [f"Question number {i}?" for i in range(20)],
                                       batch_size=2))
    runner = JobThread(created["id"])
    runner.start()
    wait_until(lambda: job(created["id"]).accepted == 2 and teacher.in_flight == 2, 10, "two answers, two calls slow")
    asked = time.monotonic()
    r = api.delete(f"{API}/jobs/{created['id']}")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    runner.join(timeout=10)
    assert not runner.is_alive() and runner.error is None
    assert runner.ended_at - asked < 5
    row = job(created["id"])
    assert row.status == "cancelled" and row.accepted == 2
    assert row.items.filter(status="pending").count() == 18  # kept, not judged
    assert teacher.count() == 4  # nothing new started after the cancel


def _finished_job(api, teacher, prompts=PROMPTS) -> int:
    created = create_job(api, job_body(openai_teacher(teacher), prompts))
    assert run_task(created["id"]) is None
    return created["id"]


def test_the_preview_pages_and_filters_by_status_and_reason(api, teacher):
    teacher.script = ["ok", "refusal", "ok", "cut_off", "ok"]
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS, batch_size=1))
    assert run_task(created["id"]) is None
    job_id = created["id"]
    page = api.get(f"{API}/jobs/{job_id}/preview", {"limit": 2}).json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"] and page["previous"] is None
    following = api.get(f"{API}/jobs/{job_id}/preview", {"limit": 2, "offset": 4}).json()
    assert len(following["results"]) == 1 and following["next"] is None
    assert [i["group"] for i in page["results"]] == [0, 1]
    assert {i["prompt"] for i in items(api, job_id, status="accepted")} == {PROMPTS[0], PROMPTS[2], PROMPTS[4]}
    rejected = items(api, job_id, status="rejected")
    assert sorted(i["reason"] for i in rejected) == ["cut_off", "refusal"]
    (refused,) = items(api, job_id, reason="refusal")
    assert refused["prompt"] == PROMPTS[1] and refused["status"] == "rejected"
    assert items(api, job_id, status="pending") == []
    r = api.get(f"{API}/jobs/{job_id}/preview", {"status": "maybe"})
    assert r.status_code == 400 and error_of(r)["message"].startswith("status: ")


def test_a_review_accepts_rejects_and_resets_items_and_moves_the_counts(api, teacher):
    teacher.script = ["ok", "refusal"]
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS[:3], batch_size=1))
    assert run_task(created["id"]) is None
    job_id = created["id"]
    ok, refused, _ = items(api, job_id)
    assert (job(job_id).accepted, job(job_id).rejected) == (2, 1)

    def review(item: dict, decision: str):
        return api.post(f"{API}/jobs/{job_id}/items/{item['id']}/review", {"decision": decision}, format="json")

    r = review(ok, "reject")
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["filter_status"] == "accepted"
    assert (job(job_id).accepted, job(job_id).rejected) == (1, 2)
    assert review(ok, "reject").status_code == 200  # the same decision twice counts once
    assert (job(job_id).accepted, job(job_id).rejected) == (1, 2)
    assert review(refused, "accept").json()["status"] == "accepted"
    assert (job(job_id).accepted, job(job_id).rejected) == (2, 1)
    assert review(ok, "reset").json()["status"] == "accepted"
    assert review(refused, "reset").json()["status"] == "rejected"
    assert (job(job_id).accepted, job(job_id).rejected) == (2, 1)
    r = review(ok, "maybe")
    assert r.status_code == 400 and error_of(r)["message"].startswith("decision: ")
    assert api.post(f"{API}/jobs/{job_id}/items/999999/review", {"decision": "accept"}, format="json").status_code == 404


def test_an_item_without_an_answer_cannot_be_accepted(api, teacher):
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS[:2]))
    pending = items(api, created["id"])[0]
    r = api.post(f"{API}/jobs/{created['id']}/items/{pending['id']}/review", {"decision": "accept"}, format="json")
    assert r.status_code == 409


@pytest.mark.parametrize("output_format", ["alpaca", "chatml"])
def test_approve_makes_a_dataset_of_the_accepted_items_once(api, teacher, output_format):
    teacher.script = ["ok", "refusal"]
    created = create_job(api, job_body(openai_teacher(teacher), PROMPTS, batch_size=1, output_format=output_format))
    assert run_task(created["id"]) is None
    job_id = created["id"]
    r = api.post(f"{API}/jobs/{job_id}/approve", {"name": "distilled v1"}, format="json")
    assert r.status_code == 201, r.content
    body = r.json()
    dataset = Dataset.objects.get(pk=body["dataset_id"])
    assert dataset.name == "distilled v1" and dataset.format == output_format
    assert dataset.origin["kind"] == "distillation" and dataset.origin["job_id"] == job_id
    assert dataset.origin["records"] == 4 and body["origin"] == dataset.origin
    assert api.get(f"{API}/jobs/{job_id}").json()["dataset_id"] == dataset.pk
    r = api.post(f"{API}/jobs/{job_id}/approve", {}, format="json")
    assert r.status_code == 409 and error_of(r)["details"]["dataset_id"] == dataset.pk
    assert Dataset.objects.count() == 1


def test_a_cancel_whose_worker_died_ends_the_job_cancelled_when_it_is_run_again(api, teacher):
    from tests.factories import reap_worker

    created = create_job(api, job_body(openai_teacher(teacher)))
    from nexus.jobs import claim, kind_get

    assert claim(kind_get("distillation"), created["id"], worker="w1@host")
    assert api.delete(f"{API}/jobs/{created['id']}").json()["cancel_requested"] is True
    assert reap_worker("w1@host")["distillation"] == [created["id"]]  # the worker died before it saw the cancel
    assert job(created["id"]).status == "queued"
    assert run_task(created["id"], worker="w2@host") is None
    assert job(created["id"]).status == "cancelled" and teacher.count() == 0


def test_approve_while_queued_or_running_is_refused(api, teacher):
    from nexus.jobs import claim, kind_get

    created = create_job(api, job_body(openai_teacher(teacher)))
    assert api.post(f"{API}/jobs/{created['id']}/approve", {}, format="json").status_code == 409
    assert claim(kind_get("distillation"), created["id"], worker="w1@host")
    r = api.post(f"{API}/jobs/{created['id']}/approve", {}, format="json")
    assert r.status_code == 409 and "running" in error_of(r)["message"]
    assert not Dataset.objects.exists()


def test_approve_with_nothing_accepted_is_refused(api, teacher):
    teacher.script = ["refusal", "refusal"]
    created = create_job(api, job_body(openai_teacher(teacher)))
    assert run_task(created["id"]) is None
    r = api.post(f"{API}/jobs/{created['id']}/approve", {}, format="json")
    assert r.status_code == 409 and not Dataset.objects.exists()


def test_the_events_of_a_job_tell_its_story(api, teacher):
    job_id = _finished_job(api, teacher, PROMPTS[:2])
    messages = [e["message"] for e in api.get(f"{API}/jobs/{job_id}/events").json()["results"] if e["message"]]
    assert messages[0].startswith("Created: 2 prompts") and messages[-1].startswith("Completed: 2 accepted")


def test_the_estimate_prices_a_body_without_saving_it(api, teacher):
    r = api.post(f"{API}/estimate", job_body(openai_teacher(teacher), PROMPTS), format="json")
    assert r.status_code == 200, r.content
    estimate = r.json()
    assert estimate["prompts"] == 5 and estimate["requests"] == 5
    cost = estimate["cost_usd"]  # USD to 4 places: the prompts alone of so small a job round to 0
    assert 0 <= cost["low"] <= cost["expected"] <= cost["high"] and cost["high"] > 0
    assert not DistillationJob.objects.exists() and teacher.count() == 0


def test_templates_are_listed_created_previewed_and_deleted(api):
    listed = api.get(f"{API}/templates").json()
    assert "coding-assistant" in {t["id"] for t in listed["results"]}
    body = {"name": "Pirate talk", "prompt": "Say {thing} like a pirate.", "variables": {"thing": ["hello", "bye"]}}
    r = api.post(f"{API}/templates", body, format="json")
    assert r.status_code == 201, r.content
    created = r.json()
    assert created["slug"] == "pirate-talk" and created["builtin"] is False
    preview = api.post(f"{API}/templates/preview", {"template_id": created["id"]}, format="json").json()
    assert sorted(preview["prompts"]) == ["Say bye like a pirate.", "Say hello like a pirate."]
    assert api.get(f"{API}/templates/pirate-talk").json()["id"] == created["id"]
    assert api.delete(f"{API}/templates/{created['id']}").status_code == 204
    assert api.get(f"{API}/templates/{created['id']}").status_code == 404
    assert api.delete(f"{API}/templates/coding-assistant").status_code == 404  # built-ins stay


# -- bad input ----------------------------------------------------------------------------------


def _with(path: str, value):
    """A change to a good body: set (or with ... delete) the value at a dotted path."""

    def change(body: dict) -> dict:
        *parents, last = path.split(".")
        node = body
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is ...:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return body

    return change


BAD = [
    (_with("prompts_config.prompts", ["a", "b", "   "]), "prompts_config.prompts[2]: is empty"),
    (_with("prompts_config.prompts", ["a", 5]), "prompts_config.prompts[1]: "),
    (_with("prompts_config.prompts", []), "prompts_config.prompts: "),
    (_with("prompts_config.prompts", ["a", {"prompt": "b", "extra": 1}]), "prompts_config.prompts[1].extra: unknown"),
    (_with("rate_limit", 0), "rate_limit: "),
    (_with("rate_limit", "fast"), "rate_limit: "),
    (_with("rate_limit", 1.5), "rate_limit: "),
    (_with("batch_size", 0), "batch_size: "),
    (_with("batch_size", 1000), "batch_size: "),
    (_with("quality_threshold", 2), "quality_threshold: "),
    (_with("output_format", "csv"), "output_format: "),
    (_with("mode", "summarize"), "mode: "),
    (_with("mode", "rephrase"), "mode: "),
    (_with("multi_teacher", "vote"), "multi_teacher: "),
    (_with("temprature", 0.5), "temprature: unknown field"),
    (_with("name", ""), "name: "),
    (_with("name", 7), "name: "),
    (_with("system_prompt", 5), "system_prompt: "),
    (_with("quality", {"min_words": -1}), "quality.min_words: "),
    (_with("quality", {"langauge": True}), "quality.langauge: unknown field"),
    (_with("teacher_config.temprature", 0.5), "teacher_config.temprature: unknown field"),
    (_with("teacher_config.temperature", 5), "teacher_config.temperature: "),
    (_with("teacher_config.max_tokens", 0), "teacher_config.max_tokens: "),
    (_with("teacher_config.max_tokens", "many"), "teacher_config.max_tokens: "),
    (_with("teacher_config.provider", "cohere"), "teacher_config.provider: "),
    (_with("teacher_config.model", ...), "teacher_config.model: "),
    (_with("teacher_config.model", ["gpt"]), "teacher_config.model: "),
    (_with("teacher_config.api_key", 12345), "teacher_config.api_key: "),
    (_with("teacher_config.base_url", "ftp://127.0.0.1/v1"), "teacher_config.base_url: "),
    (_with("teacher_config.connection_id", "one"), "teacher_config.connection_id: "),
    (_with("teacher_config", "gpt-4o"), "teacher_config: "),
    (_with("teacher_config", ...), "teacher_config: "),
    (_with("teacher_configs", []), "teacher_config: "),
    (_with("judge_config", {"model": "judge-model"}), "judge_config.api_key: "),
    (_with("prompts_config", ...), "prompts_config: "),
    (_with("prompts_config.template_id", "coding-assistant"), "prompts_config: "),
    (_with("prompts_config.num_examples", 0), "prompts_config.num_examples: "),
    (_with("prompts_config.num_examples", 10**9), "prompts_config.num_examples: "),
    (_with("prompts_config.include_reasoning", "yes"), "prompts_config.include_reasoning: "),
    (_with("prompts_config.seed", -1), "prompts_config.seed: "),
    (_with("prompts_config.shuffle", True), "prompts_config.shuffle: unknown field"),
]


@pytest.mark.parametrize("change,message", BAD, ids=[m for _, m in BAD])
def test_a_wrong_field_is_a_400_naming_its_path(api, teacher, change, message):
    body = change(job_body(openai_teacher(teacher), ["first prompt", "second prompt"]))
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400, r.content
    error = error_of(r)
    assert error["message"].startswith(message), error
    assert error["code"] in ("validation_error", "address_not_allowed")
    assert not DistillationJob.objects.exists() and not DistillationItem.objects.exists()


@pytest.mark.parametrize("prompts_config,message", [
    ({"template_id": "no-such-template"}, "prompts_config.template_id: "),
    ({"template_id": "coding-assistant", "variables": ["Python"]}, "prompts_config.variables: "),
    ({"template_id": "coding-assistant", "variables": {"language": [3]}}, "prompts_config.variables.language: "),
    ({"dataset_id": "abc"}, "prompts_config.dataset_id: "),
    ({"dataset_id": 987654321}, "prompts_config.dataset_id: "),
])
def test_a_wrong_prompt_source_is_a_400_naming_its_path(api, teacher, prompts_config, message):
    body = job_body(openai_teacher(teacher))
    body["prompts_config"] = prompts_config
    r = api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400, r.content
    assert error_of(r)["message"].startswith(message), error_of(r)


def test_a_body_that_is_not_an_object_or_not_json_is_a_400(api):
    r = api.post(f"{API}/jobs", ["a list"], format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("body: ")
    r = api.post(f"{API}/jobs", b"{not json", content_type="application/json")
    assert r.status_code == 400 and "error" in r.json()


def test_a_wrong_connection_field_is_a_400_naming_its_path(api, teacher):
    good = {"name": "c", "model": "gpt-4o-mini", "api_key": KEY, "base_url": teacher.openai_base_url}
    for change, message in [({"name": ""}, "name: "), ({"temperature": -1}, "teacher_config.temperature: "),
                            ({"colour": "red"}, "teacher_config.colour: unknown field"),
                            ({"provider": "openia"}, "teacher_config.provider: ")]:
        r = api.post(f"{API}/connections", {**good, **change}, format="json")
        assert r.status_code == 400 and error_of(r)["message"].startswith(message), (change, r.content)
    assert not TeacherConnection.objects.exists()


# -- a model deployed in Nexus as the teacher -------------------------------------------------------


@pytest.fixture
def deployment(user, base_model, teacher):
    """A running deployment whose one arm is the fake server (as a llama.cpp server speaks OpenAI's API)."""
    from nexus.secrets import secret_encrypt
    from tests.factories import make_deployment

    row = make_deployment(user, base_model, status="running")
    row.arms.update(port=teacher.port, api_key_encrypted=secret_encrypt("arm-key-1234567890"))
    teacher.api_key = "arm-key-1234567890"
    teacher.models.append(row.name)
    return row


def test_a_deployed_model_is_a_teacher_by_id_or_in_the_designs_form(api, teacher, deployment, outsider):
    from tests.factories import make_deployment

    created = create_job(api, job_body({"provider": "deployed", "deployment_id": deployment.pk}))
    (row,) = created["teachers"]
    assert (row["provider"], row["model"], row["base_url"], row["deployment_id"]) == \
        ("deployed", deployment.name, "", deployment.pk)
    assert run_task(created["id"]) is None
    assert job(created["id"]).accepted == 2 and {r["model"] for r in teacher.requests} == {deployment.name}
    designs = create_job(api, job_body({"model": f"deployed:{deployment.pk}", "temperature": 0.2}))
    assert designs["teachers"][0]["provider"] == "deployed"
    check = api.post(f"{API}/connections/test", {"provider": "deployed", "deployment_id": deployment.pk},
                     format="json").json()
    assert check["ok"] is True and deployment.name in check["message"]

    theirs = make_deployment(outsider, deployment.base_model)
    for config, message in [({"provider": "deployed", "deployment_id": theirs.pk}, "teacher_config.deployment_id: "),
                            ({"provider": "deployed", "deployment_id": deployment.pk, "api_key": KEY},
                             "teacher_config.api_key: "),
                            ({"provider": "deployed"}, "teacher_config.deployment_id: ")]:
        r = api.post(f"{API}/jobs", job_body(config), format="json")
        assert r.status_code == 400 and error_of(r)["message"].startswith(message), (config, r.content)


def test_a_job_refuses_a_stopped_deployment_as_its_teacher_but_a_connection_may_name_one(api, user, base_model):
    from tests.factories import make_deployment

    stopped = make_deployment(user, base_model, status="stopped")
    r = api.post(f"{API}/jobs", job_body({"provider": "deployed", "deployment_id": stopped.pk}), format="json")
    assert r.status_code == 409
    assert r.json()["error"]["message"] == f"teacher_config.deployment_id: deployment '{stopped.name}' is stopped: start it first"
    r = api.post(f"{API}/connections", {"name": "later", "provider": "deployed", "deployment_id": stopped.pk}, format="json")
    assert r.status_code == 201
