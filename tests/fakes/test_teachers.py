"""The fake teachers, driven by the real openai and anthropic SDKs: each scripted provider behaviour
must reach the caller as the SDK's own exception class or response fields, or tests built on the
fakes would prove nothing about the code that will face the real providers."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fakes.teachers import CHAT_PATH, MESSAGES_PATH, REFUSAL, FakeTeacher

openai = pytest.importorskip("openai", reason="the openai SDK is not installed in this environment")
anthropic = pytest.importorskip("anthropic", reason="the anthropic SDK is not installed in this environment")

PROVIDERS = ["openai", "anthropic"]
SDK = {"openai": openai, "anthropic": anthropic}
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
FINISH = {"openai": ("stop", "length"), "anthropic": ("end_turn", "max_tokens")}
PATH = {"openai": CHAT_PATH, "anthropic": MESSAGES_PATH}


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key="sk-test") as fake:
        yield fake


@pytest.fixture
def make_client(teacher: FakeTeacher) -> Iterator[Callable[..., Any]]:
    """Real SDK clients aimed at the fake (no retries unless asked), closed after the test."""
    made: list[Any] = []

    def make(provider: str, **options: Any) -> Any:
        options = {"api_key": teacher.api_key, "max_retries": 0, **options}
        if provider == "openai":
            made.append(openai.OpenAI(base_url=teacher.openai_base_url, **options))
        else:
            made.append(anthropic.Anthropic(base_url=teacher.anthropic_base_url, **options))
        return made[-1]

    yield make
    for sdk_client in made:
        sdk_client.close()


def ask(sdk_client: Any, prompt: str = "What is 2+2?", *, model: str | None = None,
        max_tokens: int | None = None) -> tuple[str, str, Any]:
    """One generation through a real SDK client: (text, finish/stop reason, the SDK's response object)."""
    messages = [{"role": "user", "content": prompt}]
    if isinstance(sdk_client, openai.OpenAI):
        extra = {"max_tokens": max_tokens} if max_tokens else {}
        reply = sdk_client.chat.completions.create(model=model or MODEL["openai"], messages=messages, **extra)
        return reply.choices[0].message.content, reply.choices[0].finish_reason, reply
    reply = sdk_client.messages.create(model=model or MODEL["anthropic"], max_tokens=max_tokens or 256,
                                       messages=messages)
    return "".join(block.text for block in reply.content), reply.stop_reason, reply


def test_openai_answer_has_the_api_shape(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    text, finish, reply = ask(make_client("openai"), "What is 2+2?")
    assert (text, finish) == ("Answer to: What is 2+2?", "stop")
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == "gpt-4o-mini"
    assert reply.choices[0].index == 0 and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == 3 and reply.usage.completion_tokens == 5
    assert reply.usage.total_tokens == 8
    (seen,) = teacher.requests
    assert seen["path"] == CHAT_PATH and seen["api"] == "openai" and seen["status"] == 200
    assert seen["prompt"] == "What is 2+2?" and seen["outcome"] == "ok" and seen["ended"] >= seen["time"]
    assert seen["headers"]["authorization"] == "Bearer sk-test"


def test_anthropic_answer_has_the_api_shape(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    reply = make_client("anthropic").messages.create(
        model="claude-haiku-4-5", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
    )
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert [(b.type, b.text) for b in reply.content] == [("text", "Answer to: Name a colour.")]
    assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (5, 5)
    (seen,) = teacher.requests
    assert seen["api"] == "anthropic" and seen["body"]["system"] == "Be brief."
    assert seen["headers"]["anthropic-version"]


def test_models_are_listed_and_looked_up(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    oa, an = make_client("openai"), make_client("anthropic")
    assert [m.id for m in oa.models.list()] == teacher.models
    assert oa.models.retrieve("gpt-4o-mini").owned_by == "fake-teacher"
    assert [m.id for m in an.models.list()] == teacher.models
    assert an.models.retrieve("claude-haiku-4-5").type == "model"
    teacher.models = ["only-this"]
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("gpt-4o-mini")
    with pytest.raises(anthropic.NotFoundError):
        an.models.retrieve("claude-haiku-4-5")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("case", "error"), [
    ("wrong_key", "AuthenticationError"),
    ("unknown_model", "NotFoundError"),
    ("error500", "InternalServerError"),
    ("overloaded", "InternalServerError"),
])
def test_failures_raise_the_sdk_exception(teacher: FakeTeacher, make_client: Callable[..., Any], provider: str,
                                          case: str, error: str) -> None:
    teacher.script = [case] if case in ("error500", "overloaded") else []
    sdk_client = make_client(provider, **({"api_key": "sk-wrong"} if case == "wrong_key" else {}))
    with pytest.raises(getattr(SDK[provider], error)) as caught:
        ask(sdk_client, model="nope" if case == "unknown_model" else None)
    # openai hands over the inner error object as exc.body; anthropic the whole envelope
    body = caught.value.body if provider == "openai" else caught.value.body["error"]
    assert set(body) >= {"message", "type"}
    if provider == "anthropic":
        assert caught.value.body["type"] == "error"
    if case == "unknown_model":
        assert "model not found" in body["message"]
    assert teacher.script == []  # a planned failure is used up, and auth or model refusals use none


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_carries_retry_after(teacher: FakeTeacher, make_client: Callable[..., Any], provider: str) -> None:
    teacher.script = [("rate_limit", 7)]
    with pytest.raises(SDK[provider].RateLimitError) as caught:
        ask(make_client(provider))
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert teacher.count(PATH[provider], status=429) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_sdk_retry_after_a_rate_limit_is_answered_once(teacher: FakeTeacher, make_client: Callable[..., Any],
                                                       provider: str) -> None:
    teacher.script = [("rate_limit", 0.05), "ok"]
    assert ask(make_client(provider, max_retries=2), "Say hi")[0] == "Answer to: Say hi"
    assert [r["status"] for r in teacher.calls_for("Say hi")] == [429, 200]
    assert teacher.repeated_prompts() == {}  # asked twice, answered (and paid) once
    assert teacher.requests[1]["headers"]["x-stainless-retry-count"] == "1"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_refusal_empty_and_cut_off_answers(teacher: FakeTeacher, make_client: Callable[..., Any],
                                           provider: str) -> None:
    stop, length = FINISH[provider]
    sdk_client = make_client(provider)
    teacher.script = ["refusal", "empty", "cut_off"]
    assert ask(sdk_client)[:2] == (REFUSAL, stop)
    text, finish, reply = ask(sdk_client)
    assert (text, finish) == ("", stop)
    if provider == "anthropic":
        assert reply.content == []  # Anthropic's empty answer has no content block at all
    assert ask(sdk_client, "one two three four five six")[:2] == ("Answer to: one two", length)
    # an answer longer than max_tokens is cut off without any script
    text, finish, reply = ask(sdk_client, "one two three four five six", max_tokens=3)
    assert (text, finish) == ("Answer to: one", length)
    assert (reply.usage.completion_tokens if provider == "openai" else reply.usage.output_tokens) == 3


@pytest.mark.parametrize("provider", PROVIDERS)
def test_disconnect_and_slow_are_connection_failures(teacher: FakeTeacher, make_client: Callable[..., Any],
                                                     provider: str) -> None:
    sdk = SDK[provider]
    teacher.script = ["disconnect", ("slow", 30)]
    with pytest.raises(sdk.APIConnectionError) as caught:
        ask(make_client(provider))
    assert not isinstance(caught.value, sdk.APITimeoutError)
    started = time.monotonic()
    with pytest.raises(sdk.APITimeoutError):
        ask(make_client(provider, timeout=0.3))
    assert time.monotonic() - started < 5
    assert [r["outcome"] for r in teacher.requests] == ["disconnect", ("slow", 30.0)]


def test_callable_script_and_responder(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    oa, an = make_client("openai"), make_client("anthropic")
    teacher.script = lambda request: "error500" if request["n"] == 2 else "ok"
    teacher.responder = lambda messages, model: f"{model}: {messages[-1]['content'].upper()}"
    assert ask(oa, "first")[0] == "gpt-4o-mini: FIRST"
    with pytest.raises(openai.InternalServerError):
        ask(oa, "second")
    assert ask(an, "third")[0] == "claude-haiku-4-5: THIRD"
    teacher.script = lambda request: "no-such-outcome"
    with pytest.raises(openai.InternalServerError, match="no-such-outcome"):
        ask(oa)


def test_unknown_planned_outcome_fails_in_the_test() -> None:
    with pytest.raises(ValueError, match="unknown fake-teacher outcome"):
        FakeTeacher(script=["ok", "eror500"])


def test_concurrency_and_rate_window(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    teacher.latency_s = 0.8
    clients = [make_client("openai") for _ in range(4)]
    barrier = threading.Barrier(4)
    answers: list[str] = []

    def one(index: int) -> None:
        barrier.wait()
        answers.append(ask(clients[index], f"q{index}")[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(answers) == [f"Answer to: q{i}" for i in range(4)]
    assert teacher.max_in_flight == 4 and teacher.in_flight == 0
    teacher.latency_s = 0
    time.sleep(1.2)
    ask(clients[0], "q4")
    assert teacher.count(CHAT_PATH) == 5
    assert teacher.max_in_window(60.0) == 5 and teacher.max_in_window(1.0) == 4
    assert all(len(teacher.calls_for(f"q{i}")) == 1 for i in range(5))
    teacher.reset()
    assert teacher.requests == [] and teacher.max_in_flight == 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stop_refuses_connections_and_start_comes_back_on_the_same_port(
        teacher: FakeTeacher, make_client: Callable[..., Any], provider: str) -> None:
    sdk_client = make_client(provider)
    ask(sdk_client)  # leaves a kept-alive connection in the SDK's pool
    port = teacher.port
    teacher.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(SDK[provider].APIConnectionError):
        ask(sdk_client)
    teacher.start()
    assert teacher.port == port
    ask(sdk_client)
    assert teacher.count(PATH[provider], status=200) == 2


def test_stop_cuts_an_answer_in_progress(teacher: FakeTeacher, make_client: Callable[..., Any]) -> None:
    teacher.script = [("slow", 30)]
    sdk_client = make_client("anthropic")
    errors: list[Exception] = []

    def waiting() -> None:
        try:
            ask(sdk_client)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiting)
    thread.start()
    deadline = time.monotonic() + 5
    while teacher.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    teacher.stop()
    thread.join(timeout=5)
    assert time.monotonic() - started < 3
    assert len(errors) == 1 and isinstance(errors[0], anthropic.APIConnectionError)
    assert teacher.requests[0]["status"] is None


def raw(teacher: FakeTeacher, path: str, headers: dict[str, str], body: dict[str, Any] | None) -> tuple[int, Any]:
    """A bare HTTP call, for rules the SDKs never break (they always send their auth and version headers)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(teacher.anthropic_base_url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.load(error)


def test_raw_auth_rules_and_error_bodies(teacher: FakeTeacher) -> None:
    """The providers' documented rules, below what one SDK version happens to send."""
    message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    ok = raw(teacher, MESSAGES_PATH, {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}, message)
    assert ok[0] == 200 and ok[1]["content"][0]["text"] == "Answer to: hi"
    no_version = {"type": "invalid_request_error", "message": "anthropic-version: header is required"}
    assert raw(teacher, MESSAGES_PATH, {"x-api-key": "sk-test"}, message) == (400, {"type": "error",
                                                                                   "error": no_version})
    status, body = raw(teacher, MESSAGES_PATH, {"anthropic-version": "2023-06-01"}, message)
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    status, body = raw(teacher, CHAT_PATH, {}, {"model": "gpt-4o-mini", "messages": []})
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
    status, body = raw(teacher, "/v1/embeddings", {"Authorization": "Bearer sk-test"}, {})
    assert (status, body["error"]["message"]) == (404, "Invalid URL (POST /v1/embeddings)")
