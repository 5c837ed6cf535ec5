"""Teacher clients against the local fake provider, through the real openai and anthropic SDKs: what a
provider does must reach the run as an Answer or as the right TeacherError, in one HTTP request."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from datasets_app.distillation.engine.teachers import teacher_client, token_limit_field
from datasets_app.distillation.engine.types import (
    Answer,
    TeacherFatal,
    TeacherRejected,
    TeacherRetry,
    TeacherSpec,
)
from tests.fakes.teachers import CHAT_PATH, MESSAGES_PATH, MODELS_PATH, FakeTeacher

PROVIDERS = ["openai", "anthropic"]
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PATH = {"openai": CHAT_PATH, "anthropic": MESSAGES_PATH}
KEY = "sk-test-5f3a9c1e7b2d"
WRONG_KEY = "sk-wrong-8e6d4c2a0f1b"
ASK = [{"role": "user", "content": "What is 2+2?"}]


def url_of(teacher: FakeTeacher, provider: str) -> str:
    return teacher.anthropic_base_url if provider == "anthropic" else teacher.openai_base_url


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def make(teacher: FakeTeacher) -> Iterator[Callable[..., Any]]:
    """Teacher clients aimed at the fake, closed after the test."""
    made: list[Any] = []

    def make_one(provider: str, **changes: Any) -> Any:
        options: dict[str, Any] = {"model": MODEL.get(provider, "served-model"), "api_key": KEY,
                                   "base_url": url_of(teacher, provider), "timeout_s": 5.0, **changes}
        made.append(teacher_client(TeacherSpec(provider=provider, **options)))
        return made[-1]

    yield make_one
    for client in made:
        client.close()


# -- answers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_has_text_tokens_model_and_latency(teacher: FakeTeacher, make: Callable[..., Any],
                                                  provider: str) -> None:
    teacher.latency_s = 0.05
    answer = make(provider).complete(ASK)
    assert isinstance(answer, Answer)
    assert (answer.text, answer.finish_reason, answer.refusal, answer.reasoning) == (
        "Answer to: What is 2+2?", "stop", "", "")
    assert (answer.tokens_in, answer.tokens_out) == (3, 5)
    assert answer.model == MODEL[provider]
    assert answer.latency_ms >= 50


@pytest.mark.parametrize("provider", PROVIDERS)
def test_system_prompt_temperature_and_max_tokens_reach_the_provider(teacher: FakeTeacher, make: Callable[..., Any],
                                                                     provider: str) -> None:
    client = make(provider, temperature=0.3, max_tokens=64)
    client.complete(ASK, system="Be brief.")
    client.complete(ASK, max_tokens=10, temperature=0.0)
    first, second = (r["body"] for r in teacher.requests)
    if provider == "openai":
        assert first["messages"] == [{"role": "system", "content": "Be brief."}, *ASK]
        assert second["messages"] == ASK
    else:
        assert first["system"] == "Be brief." and first["messages"] == ASK
        assert "system" not in second  # an empty system prompt is left out, not sent as ""
    assert (first["temperature"], first["max_tokens"]) == (0.3, 64)
    assert (second["temperature"], second["max_tokens"]) == (0.0, 10)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cut_off_answer_is_finish_reason_length(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    teacher.script = ["cut_off"]
    answer = make(provider).complete([{"role": "user", "content": "one two three four five six"}])
    assert answer.finish_reason == "length" and answer.text == "Answer to: one two"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_empty_answer_is_an_empty_text_not_an_error(teacher: FakeTeacher, make: Callable[..., Any],
                                                    provider: str) -> None:
    teacher.script = ["empty"]
    answer = make(provider).complete(ASK)
    assert (answer.text, answer.finish_reason, answer.tokens_out) == ("", "stop", 0)


def test_deployed_server_is_called_through_the_openai_protocol(teacher: FakeTeacher, make: Callable[..., Any]) -> None:
    teacher.models = ["served-model"]
    answer = make("deployed", base_url=teacher.openai_base_url).complete(ASK)
    assert answer.text == "Answer to: What is 2+2?"
    assert teacher.requests[0]["path"] == CHAT_PATH


def test_one_client_serves_many_threads_at_once(teacher: FakeTeacher, make: Callable[..., Any]) -> None:
    teacher.latency_s = 0.4
    client = make("openai")
    texts: list[str] = []
    barrier = threading.Barrier(4)

    def ask(index: int) -> None:
        barrier.wait()
        texts.append(client.complete([{"role": "user", "content": f"q{index}"}]).text)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(texts) == [f"Answer to: q{i}" for i in range(4)]
    assert teacher.max_in_flight == 4


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown teacher provider 'gemini'"):
        teacher_client(TeacherSpec(provider="gemini", model="x"))


def test_openai_own_api_gets_max_completion_tokens_and_compatible_servers_max_tokens() -> None:
    assert token_limit_field(TeacherSpec(provider="openai", model="o3")) == "max_completion_tokens"
    assert token_limit_field(TeacherSpec(provider="openai", model="o3",
                                         base_url="https://API.openai.com/v1")) == "max_completion_tokens"
    assert token_limit_field(TeacherSpec(provider="openai", model="m", base_url="http://vllm:8000/v1")) == "max_tokens"
    assert token_limit_field(TeacherSpec(provider="deployed", model="m", base_url="http://h:1/v1")) == "max_tokens"


# -- failures -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_wrong_key_is_fatal_and_never_quoted(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    client = make(provider, api_key=WRONG_KEY)
    with pytest.raises(TeacherFatal) as caught:
        client.complete(ASK)
    error = caught.value
    assert error.code == "key" and error.status == 401
    assert error.message.startswith(f"{provider}:{MODEL[provider]} refused the API key (401 Unauthorized)")
    for text in (str(error), error.message, repr(error)):
        assert WRONG_KEY not in text and WRONG_KEY[:6] not in text
    # the SDK's exception, which may quote the key, is not chained into tracebacks
    assert error.__cause__ is None and error.__suppress_context__
    assert teacher.count(PATH[provider]) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_unknown_model_is_fatal(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    with pytest.raises(TeacherFatal) as caught:
        make(provider, model="no-such-model").complete(ASK)
    assert caught.value.code == "model" and caught.value.status == 404
    assert caught.value.message == (f"{provider}:no-such-model: the model 'no-such-model' does not exist or this "
                                    f"key has no access to it")


@pytest.mark.parametrize(("provider", "suffix"), [("openai", "/v2"), ("anthropic", "/v1")])
def test_base_url_that_is_not_the_api_is_fatal_address(teacher: FakeTeacher, make: Callable[..., Any], provider: str,
                                                       suffix: str) -> None:
    base_url = f"http://127.0.0.1:{teacher.port}{suffix}"
    with pytest.raises(TeacherFatal) as caught:
        make(provider, base_url=base_url).complete(ASK)
    assert caught.value.code == "address"
    assert f"the base URL {base_url} does not serve the" in caught.value.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_is_retry_with_the_servers_retry_after(teacher: FakeTeacher, make: Callable[..., Any],
                                                          provider: str) -> None:
    teacher.script = [("rate_limit", 2)]
    with pytest.raises(TeacherRetry) as caught:
        make(provider).complete(ASK)
    assert (caught.value.kind, caught.value.retry_after_s, caught.value.status) == ("rate_limit", 2, 429)
    assert caught.value.message.startswith(f"{provider}:{MODEL[provider]} is rate limiting this key (429)")
    assert teacher.count(PATH[provider]) == 1  # the SDK did not wait and retry on its own


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(("outcome", "status"), [("error500", 500), ("overloaded", None)])
def test_server_errors_and_overload_are_retry_server(teacher: FakeTeacher, make: Callable[..., Any], provider: str,
                                                     outcome: str, status: int | None) -> None:
    teacher.script = [outcome]
    with pytest.raises(TeacherRetry) as caught:
        make(provider).complete(ASK)
    expected = status or (529 if provider == "anthropic" else 503)
    assert (caught.value.kind, caught.value.status) == ("server", expected)
    assert f"had a server error ({expected})" in caught.value.message
    assert teacher.count(PATH[provider]) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_answer_slower_than_timeout_is_retry_timeout(teacher: FakeTeacher, make: Callable[..., Any],
                                                     provider: str) -> None:
    teacher.script = [("slow", 5)]
    with pytest.raises(TeacherRetry) as caught:
        make(provider, timeout_s=0.3).complete(ASK)
    assert caught.value.kind == "timeout"
    assert caught.value.message == f"{provider}:{MODEL[provider]} did not answer within 0.3 s"
    assert teacher.count(PATH[provider]) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stopped_server_is_retry_connection(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    client = make(provider)
    client.complete(ASK)  # leaves a pooled connection that stop() cuts
    teacher.stop()
    with pytest.raises(TeacherRetry) as caught:
        client.complete(ASK)
    assert caught.value.kind == "connection"
    assert caught.value.message.startswith(f"{provider}:{MODEL[provider]}: could not connect to http://127.0.0.1:")
    with pytest.raises(TeacherRetry) as caught:
        client.complete(ASK)
    assert "connection refused" in caught.value.message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_connection_cut_mid_answer_is_retry_connection(teacher: FakeTeacher, make: Callable[..., Any],
                                                       provider: str) -> None:
    teacher.script = ["disconnect"]
    with pytest.raises(TeacherRetry) as caught:
        make(provider).complete(ASK)
    assert caught.value.kind == "connection"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_complete_call_is_exactly_one_http_request(teacher: FakeTeacher, make: Callable[..., Any],
                                                         provider: str) -> None:
    outcomes = ["ok", "error500", "overloaded", ("rate_limit", 0.01), "disconnect", ("slow", 2), "cut_off", "ok"]
    teacher.script = outcomes
    client = make(provider, timeout_s=0.5)
    for _ in outcomes:
        try:
            client.complete(ASK)
        except TeacherRetry:
            pass
    assert teacher.count(PATH[provider]) == len(outcomes)
    assert all(r["headers"].get("x-stainless-retry-count", "0") == "0" for r in teacher.requests)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_bad_request_is_rejected_for_this_item_only(teacher: FakeTeacher, make: Callable[..., Any],
                                                    provider: str) -> None:
    with pytest.raises(TeacherRejected) as caught:
        make(provider, model="", label="teacher A").complete(ASK)  # the fake's 400 for a missing model
    assert caught.value.status == 400
    assert caught.value.message == "teacher A rejected the request (400): model and messages are required"


# -- check() ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_check_ok_names_the_model_and_generates_nothing(teacher: FakeTeacher, make: Callable[..., Any],
                                                        provider: str) -> None:
    result = make(provider).check()
    assert result.ok and result.problem == "" and result.models == [MODEL[provider]]
    assert result.message == f"Connected: model {MODEL[provider]} answered in {result.latency_ms} ms"
    assert [r["path"] for r in teacher.requests] == [f"{MODELS_PATH}/{MODEL[provider]}"]


def test_check_of_a_deployed_server_accepts_whatever_model_it_serves(teacher: FakeTeacher,
                                                                     make: Callable[..., Any]) -> None:
    teacher.models = ["smollm2-135m-q8_0.gguf"]
    result = make("deployed", model="anything", base_url=teacher.openai_base_url).check()
    assert result.ok and result.models == ["smollm2-135m-q8_0.gguf"]
    assert [r["path"] for r in teacher.requests] == [MODELS_PATH]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_check_with_a_wrong_key_says_so(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    result = make(provider, api_key=WRONG_KEY).check()
    assert (result.ok, result.problem, result.message) == (False, "key", "Wrong API key: the server answered 401")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_check_of_an_unknown_model_says_so(teacher: FakeTeacher, make: Callable[..., Any], provider: str) -> None:
    result = make(provider, model="gpt-9").check()
    assert (result.ok, result.problem) == (False, "model")
    assert result.message == "The model 'gpt-9' does not exist on this server"


@pytest.mark.parametrize("provider", [*PROVIDERS, "deployed"])
def test_check_of_a_stopped_server_is_unreachable(teacher: FakeTeacher, make: Callable[..., Any],
                                                  provider: str) -> None:
    client = make(provider, base_url=url_of(teacher, provider))
    teacher.stop()
    result = client.check()
    assert (result.ok, result.problem) == (False, "unreachable")
    assert result.message == f"Could not reach {url_of(teacher, provider)} (connection refused)"


def test_check_of_an_address_that_is_not_the_api_is_unreachable(teacher: FakeTeacher,
                                                                 make: Callable[..., Any]) -> None:
    result = make("deployed", base_url=f"http://127.0.0.1:{teacher.port}/v2").check()
    assert (result.ok, result.problem) == (False, "unreachable")
    assert "answered 404: it does not serve the OpenAI-compatible API" in result.message


# -- provider answers the fake never gives ------------------------------------------------------------

class Canned:
    """A server answering every request with one fixed reply (status, JSON or raw text, headers)."""

    def __init__(self) -> None:
        self.reply: tuple[int, Any, dict[str, str]] = (200, {}, {})
        canned = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, body, headers = canned.reply
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.port = self.server.server_address[1]
        self.clients: list[Any] = []

    def client(self, provider: str, **changes: Any) -> Any:
        base = f"http://127.0.0.1:{self.port}" + ("" if provider == "anthropic" else "/v1")
        options = {"model": MODEL[provider], "api_key": KEY, "base_url": base, "timeout_s": 5.0, **changes}
        self.clients.append(teacher_client(TeacherSpec(provider=provider, **options)))
        return self.clients[-1]


@pytest.fixture
def canned() -> Iterator[Canned]:
    server = Canned()
    yield server
    for client in server.clients:
        client.close()
    server.server.shutdown()
    server.server.server_close()


def chat(message: dict[str, Any], finish: str = "stop", usage: dict[str, int] | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
                             "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                          "finish_reason": finish}]}
    if usage is not None:
        reply["usage"] = usage
    return reply


def anthropic_message(content: list[dict[str, Any]], stop: str = "end_turn") -> dict[str, Any]:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-haiku-4-5", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 9}}


def test_openai_refusal_field_makes_a_refusal_answer(canned: Canned) -> None:
    canned.reply = (200, chat({"content": None, "refusal": "I can't help with that."}), {})
    answer = canned.client("openai").complete(ASK)
    assert (answer.text, answer.finish_reason, answer.refusal) == ("", "refusal", "I can't help with that.")
    assert (answer.tokens_in, answer.tokens_out) == (0, 0)  # no usage in the body


def test_openai_compatible_reasoning_content_is_kept_apart(canned: Canned) -> None:
    canned.reply = (200, chat({"content": "4", "reasoning_content": "2+2 is 4."}, usage={
        "prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}), {})
    answer = canned.client("openai").complete(ASK)
    assert (answer.text, answer.reasoning, answer.tokens_out) == ("4", "2+2 is 4.", 6)


def test_openai_content_filter_finish_is_kept(canned: Canned) -> None:
    canned.reply = (200, chat({"content": None}, finish="content_filter"), {})
    answer = canned.client("openai").complete(ASK)
    assert (answer.text, answer.finish_reason) == ("", "content_filter")


def test_anthropic_thinking_blocks_are_reasoning_and_refusal_stop_is_a_refusal(canned: Canned) -> None:
    canned.reply = (200, anthropic_message([
        {"type": "thinking", "thinking": "The user asks a sum.", "signature": "sig"},
        {"type": "text", "text": "It is "}, {"type": "text", "text": "4."},
    ]), {})
    answer = canned.client("anthropic").complete(ASK)
    assert (answer.text, answer.reasoning, answer.finish_reason) == ("It is 4.", "The user asks a sum.", "stop")
    assert (answer.tokens_in, answer.tokens_out) == (7, 9)
    canned.reply = (200, anthropic_message([{"type": "text", "text": "I won't."}], stop="refusal"), {})
    answer = canned.client("anthropic").complete(ASK)
    assert (answer.finish_reason, answer.refusal) == ("refusal", "I won't.")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("body", [{"id": "x"}, "<html><body>Welcome to nginx!</body></html>"])
def test_malformed_200_is_retry_server(canned: Canned, provider: str, body: Any) -> None:
    canned.reply = (200, body, {})
    with pytest.raises(TeacherRetry) as caught:
        canned.client(provider).complete(ASK)
    assert (caught.value.kind, caught.value.status) == ("server", 200)
    assert caught.value.message.startswith(f"{provider}:{MODEL[provider]} returned a malformed answer (")
    assert "attribute" not in caught.value.message  # no Python internals in a user's sentence


@pytest.mark.parametrize(("headers", "expected"), [
    ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
    ({"retry-after": "3"}, 3.0),
    ({}, None),
    ({"retry-after": "soon"}, None),
])
def test_retry_after_comes_from_either_header(canned: Canned, headers: dict[str, str], expected: float | None) -> None:
    canned.reply = (429, {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
                    headers)
    with pytest.raises(TeacherRetry) as caught:
        canned.client("openai").complete(ASK)
    assert caught.value.retry_after_s == expected


def test_retry_after_as_an_http_date(canned: Canned) -> None:
    canned.reply = (429, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
                    {"retry-after": formatdate(timeval=time.time() + 30, usegmt=True)})
    with pytest.raises(TeacherRetry) as caught:
        canned.client("anthropic").complete(ASK)
    assert caught.value.retry_after_s is not None and 25 <= caught.value.retry_after_s <= 31


def test_openai_401_echo_of_the_key_is_not_repeated(canned: Canned) -> None:
    canned.reply = (401, {"error": {"message": f"Incorrect API key provided: {KEY[:5]}***{KEY[-4:]}.",
                                    "type": "invalid_request_error", "code": "invalid_api_key"}}, {})
    with pytest.raises(TeacherFatal) as caught:
        canned.client("openai").complete(ASK)
    assert KEY[-4:] not in caught.value.message and "Incorrect API key" not in caught.value.message


def test_the_key_is_masked_wherever_a_provider_quotes_it(canned: Canned) -> None:
    canned.reply = (400, {"error": {"message": f"bad request from key {KEY} in project p",
                                    "type": "invalid_request_error", "code": None}}, {})
    with pytest.raises(TeacherRejected) as caught:
        canned.client("openai").complete(ASK)
    assert caught.value.message.endswith("bad request from key *** in project p")


def test_long_provider_messages_are_trimmed(canned: Canned) -> None:
    canned.reply = (400, {"error": {"message": "x " * 1000, "type": "invalid_request_error"}}, {})
    with pytest.raises(TeacherRejected) as caught:
        canned.client("openai").complete(ASK)
    assert len(caught.value.message) < 400 and caught.value.message.endswith("…")


@pytest.mark.parametrize(("status", "body", "code"), [
    (403, {"error": {"message": "Project does not have access", "type": "permission_error"}}, "permission"),
    (429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                     "code": "insufficient_quota"}}, "quota"),
    (400, {"error": {"message": "Unsupported value: 'temperature' does not support 0.7 with this model.",
                     "type": "invalid_request_error", "param": "temperature", "code": "unsupported_value"}},
     "parameter"),
])
def test_failures_a_person_must_fix_are_fatal(canned: Canned, status: int, body: dict[str, Any], code: str) -> None:
    canned.reply = (status, body, {})
    with pytest.raises(TeacherFatal) as caught:
        canned.client("openai").complete(ASK)
    assert (caught.value.code, caught.value.status) == (code, status)
    assert caught.value.message.startswith("openai:gpt-4o-mini")


def test_anthropic_low_credit_is_fatal(canned: Canned) -> None:
    canned.reply = (400, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API."}}, {})
    with pytest.raises(TeacherFatal) as caught:
        canned.client("anthropic").complete(ASK)
    assert caught.value.code == "quota"
