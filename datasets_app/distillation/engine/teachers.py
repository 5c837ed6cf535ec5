"""Teacher (and judge) clients over the providers' official SDKs. Django-free.

`teacher_client(spec)` gives one object with `complete()` and `check()` (the `TeacherClient` protocol in
types.py). Every failure leaves as TeacherFatal, TeacherRetry or TeacherRejected with a sentence that
names the teacher and never the key; the SDKs' own retries are off because the caller counts every
attempt against its rate limit.
"""
from __future__ import annotations

import email.utils
import re
import time
import urllib.parse
from typing import Any

import anthropic
import openai

from datasets_app.distillation.engine.types import (
    Answer,
    ConnectionCheck,
    TeacherClient,
    TeacherError,
    TeacherFatal,
    TeacherRejected,
    TeacherRetry,
    TeacherSpec,
)

DETAIL_CHARS = 300
# A test connection is a person waiting on a form: it should not hang as long as a long generation may.
CHECK_TIMEOUT_S = 20.0
API_NAMES = {"openai": "OpenAI", "deployed": "OpenAI-compatible", "anthropic": "Anthropic"}
# Both APIs report billing trouble per request (OpenAI as a 429 "insufficient_quota", Anthropic as a 400
# about the credit balance); retrying or failing item by item would burn the whole job on it.
_QUOTA_CODES = {"insufficient_quota", "billing_hard_limit_reached"}
_QUOTA_TEXT = re.compile(r"credit balance|insufficient[_ ]quota|exceeded your current quota", re.I)
# OpenAI's 401 echoes the start and end of the key it was given ("Incorrect API key provided: sk-ab***xyz.").
_KEY_ECHO = re.compile(r"(Incorrect API key provided)\s*:\s*\S+", re.I)
# the request fields the engine sets on every call, whatever the item
_SENT_PARAMS = ("temperature", "max_tokens", "max_completion_tokens")
_OPENAI_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}
_ANTHROPIC_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "refusal"}


def teacher_client(spec: TeacherSpec) -> TeacherClient:
    """The client for `spec.provider`; its SDK client is built once and shared by the caller's threads
    (both SDKs' clients are thread-safe and pool their connections)."""
    if spec.provider in ("openai", "deployed"):
        return OpenAITeacher(spec)
    if spec.provider == "anthropic":
        return AnthropicTeacher(spec)
    raise ValueError(f"unknown teacher provider {spec.provider!r}; known: openai, anthropic, deployed")


class _Teacher:
    """What both providers share: error mapping, sanitizing, timing. Subclasses call their SDK."""

    _sdk: Any  # the SDK module: its exception classes are looked up on it
    _client_class: Any

    def __init__(self, spec: TeacherSpec) -> None:
        self.spec = spec
        # "none": both SDKs refuse to start without a key, and a local llama.cpp server needs none
        self._client = self._client_class(api_key=spec.api_key or "none", base_url=spec.base_url or None,
                                          max_retries=0, timeout=spec.timeout_s)

    @property
    def base_url(self) -> str:
        return str(self._client.base_url).rstrip("/")

    def close(self) -> None:
        """Releases the pooled connections (the client is unusable afterwards)."""
        self._client.close()

    # -- the protocol ----------------------------------------------------------------------------

    def complete(self, messages: list[dict[str, str]], *, system: str = "", max_tokens: int | None = None,
                 temperature: float | None = None) -> Answer:
        started = time.monotonic()
        try:
            reply = self._create(messages, system=system,
                                 max_tokens=self.spec.max_tokens if max_tokens is None else max_tokens,
                                 temperature=self.spec.temperature if temperature is None else temperature)
        except self._sdk.APIError as exc:
            raise self._error(exc) from _cause(exc)
        latency_ms = _ms_since(started)
        try:
            answer = self._answer(reply)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            # A 200 the SDK could not shape (a proxy's HTML page, a server that speaks another dialect):
            # it may pass on the next try, and the item must not be stored as an empty answer. Our own
            # ValueErrors say what is missing; Python's own text is no sentence for a user.
            what = str(exc) if type(exc) is ValueError else "not a chat answer"
            raise TeacherRetry(f"{self.spec.name} returned a malformed answer ({what})", kind="server",
                               status=200) from None
        answer.latency_ms = latency_ms
        return answer

    def check(self) -> ConnectionCheck:
        started = time.monotonic()
        try:
            models = self._probe(self._client.with_options(timeout=min(self.spec.timeout_s, CHECK_TIMEOUT_S)))
        except self._sdk.APIError as exc:
            return self._check_failed(exc, _ms_since(started))
        latency_ms = _ms_since(started)
        if self.spec.provider == "deployed":
            served = ", ".join(models) or "no model names"
            message = f"Connected: the server answered in {latency_ms} ms (serving {served})"
        else:
            message = f"Connected: model {self.spec.model} answered in {latency_ms} ms"
        return ConnectionCheck(ok=True, message=message, latency_ms=latency_ms, models=models)

    # -- provider specifics ----------------------------------------------------------------------

    def _create(self, messages: list[dict[str, str]], *, system: str, max_tokens: int, temperature: float) -> Any:
        raise NotImplementedError

    def _answer(self, reply: Any) -> Answer:
        raise NotImplementedError

    def _probe(self, client: Any) -> list[str]:
        """The cheap call of check(): model metadata, no tokens generated; returns the model ids seen."""
        model = client.models.retrieve(self.spec.model)
        return [model.id]

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, exc: Exception) -> TeacherError:
        """One SDK exception as the engine's error. Order matters: a timeout is also a connection error."""
        name, sdk = self.spec.name, self._sdk
        if isinstance(exc, sdk.APITimeoutError):
            return TeacherRetry(f"{name} did not answer within {self.spec.timeout_s:g} s", kind="timeout")
        if isinstance(exc, sdk.APIConnectionError):
            return TeacherRetry(self._clean(f"{name}: could not connect to {self.base_url} ({_reason(exc)})"),
                                kind="connection")
        if not isinstance(exc, sdk.APIStatusError):  # e.g. APIResponseValidationError on a 200
            return TeacherRetry(self._clean(f"{name} returned a malformed answer ({self._detail(exc)})"),
                                kind="server")
        status, detail, code = exc.status_code, self._detail(exc), _error_code(exc)
        if status == 401:
            # no provider text at all: it is the one message that may quote the key
            return TeacherFatal(f"{name} refused the API key (401 Unauthorized): check the key of this teacher "
                                f"connection", status=401, code="key")
        if status == 402 or code in _QUOTA_CODES or (status in (400, 403, 429) and _QUOTA_TEXT.search(detail)):
            return TeacherFatal(self._clean(f"{name}: the account behind this key has no credit or quota left "
                                            f"({status}): {detail}"), status=status, code="quota")
        if status == 400 and _unsupported_setting(exc, detail):
            # the model refuses a setting of the teacher (e.g. a temperature reasoning models do not take):
            # every item would be refused the same way, so a person has to change the teacher
            return TeacherFatal(self._clean(f"{name} does not accept a setting of this teacher (400): {detail}"),
                                status=400, code="parameter")
        if status == 403:
            return TeacherFatal(self._clean(f"{name}: this key has no permission for this request (403 Forbidden): "
                                            f"{detail}"), status=403, code="permission")
        if status == 404:
            if _about_model(detail, code):
                return TeacherFatal(f"{name}: the model '{self.spec.model}' does not exist or this key has no "
                                    f"access to it", status=404, code="model")
            return TeacherFatal(self._clean(f"{name}: the base URL {self.base_url} does not serve the "
                                            f"{API_NAMES[self.spec.provider]} API (404 Not Found): "
                                            f"{self._address_hint()}"), status=404, code="address")
        if status == 429:
            return TeacherRetry(self._clean(f"{name} is rate limiting this key (429): {detail}"), kind="rate_limit",
                                retry_after_s=retry_after_s(exc.response.headers), status=429)
        if status == 408:
            return TeacherRetry(f"{name} timed out on its side (408)", kind="timeout", status=408)
        if status == 409 or status >= 500:  # the SDKs themselves treat these as worth another try
            return TeacherRetry(self._clean(f"{name} had a server error ({status}): {detail}"), kind="server",
                                status=status)
        return TeacherRejected(self._clean(f"{name} rejected the request ({status}): {detail}"), status=status,
                               code="rejected")

    def _check_failed(self, exc: Exception, latency_ms: int) -> ConnectionCheck:
        """The same failures as complete(), in the words of a "test connection" button."""
        error = self._error(exc)
        url = self.base_url
        if isinstance(error, TeacherRetry) and error.kind == "connection":
            problem, message = "unreachable", f"Could not reach {url} ({_reason(exc)})"
        elif isinstance(error, TeacherRetry) and error.kind == "timeout":
            waited = min(self.spec.timeout_s, CHECK_TIMEOUT_S)
            problem, message = "unreachable", f"No answer from {url} within {waited:g} s"
        elif error.code == "key":
            problem, message = "key", "Wrong API key: the server answered 401"
        elif error.code == "permission":
            problem, message = "key", f"The key has no permission: the server answered 403 ({self._detail(exc)})"
        elif error.code == "model":
            problem, message = "model", f"The model '{self.spec.model}' does not exist on this server"
        elif error.code == "address":
            # the address leads somewhere, just not to the API: the field to fix is the base URL
            problem, message = "unreachable", (f"{url} answered 404: it does not serve the "
                                               f"{API_NAMES[self.spec.provider]} API. {self._address_hint()}")
        else:
            problem, message = "other", error.message
        return ConnectionCheck(ok=False, message=self._clean(message), problem=problem, latency_ms=latency_ms)

    def _address_hint(self) -> str:
        return "check the teacher connection's base URL (it usually ends in /v1)"

    def _detail(self, exc: Exception) -> str:
        """The provider's own words, from the parsed error body when there is one."""
        body = getattr(exc, "body", None)
        if isinstance(body, dict) and isinstance(body.get("error"), dict):  # Anthropic hands the whole envelope
            body = body["error"]
        text = body.get("message") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            text = body if isinstance(body, str) and body else getattr(exc, "message", None) or str(exc)
        return self._trim(self._clean(" ".join(str(text).split())))

    def _clean(self, text: str) -> str:
        """Never a key in a message: the exact key, and OpenAI's echo of one that was wrong."""
        text = _KEY_ECHO.sub(r"\1", text)
        key = self.spec.api_key
        # a key of a few characters (a local server's placeholder) would mask ordinary words instead
        return text.replace(key, "***") if len(key) >= 4 else text

    @staticmethod
    def _trim(text: str) -> str:
        return text if len(text) <= DETAIL_CHARS else text[:DETAIL_CHARS - 1].rstrip() + "…"


class OpenAITeacher(_Teacher):
    """OpenAI's API, and OpenAI-compatible servers (provider "deployed": a deployment's llama.cpp server;
    vLLM and others through a base URL)."""

    _sdk = openai
    _client_class = openai.OpenAI

    def _create(self, messages: list[dict[str, str]], *, system: str, max_tokens: int, temperature: float) -> Any:
        turns = ([{"role": "system", "content": system}] if system else []) + list(messages)
        limit = {token_limit_field(self.spec): max_tokens}
        return self._client.chat.completions.create(model=self.spec.model, messages=turns, temperature=temperature,
                                                    **limit)

    def _answer(self, reply: Any) -> Answer:
        if not reply.choices:
            raise ValueError("no choices")
        choice = reply.choices[0]
        message = choice.message
        refusal = message.refusal or ""
        if message.content is None and not refusal and choice.finish_reason not in ("length", "content_filter"):
            raise ValueError("no message content")
        finish = "refusal" if refusal else _OPENAI_FINISH.get(choice.finish_reason, "other")
        usage = reply.usage
        return Answer(text=message.content or "", reasoning=_openai_reasoning(message), finish_reason=finish,
                      refusal=refusal, tokens_in=(usage.prompt_tokens or 0) if usage else 0,
                      tokens_out=(usage.completion_tokens or 0) if usage else 0, model=reply.model or self.spec.model)

    def _probe(self, client: Any) -> list[str]:
        if self.spec.provider == "deployed":
            # a llama.cpp server serves one model under whatever name it was started with
            return [model.id for model in client.models.list()]
        return super()._probe(client)


class AnthropicTeacher(_Teacher):
    """Anthropic's Messages API."""

    _sdk = anthropic
    _client_class = anthropic.Anthropic

    def _create(self, messages: list[dict[str, str]], *, system: str, max_tokens: int, temperature: float) -> Any:
        options: dict[str, Any] = {"system": system} if system else {}
        # temperature travels as a body field: recent SDK releases dropped the typed argument, and
        # extra_body sends the same API field with every SDK version the project allows
        return self._client.messages.create(model=self.spec.model, max_tokens=max_tokens, messages=messages,
                                            extra_body={"temperature": temperature}, **options)

    def _answer(self, reply: Any) -> Answer:
        if not isinstance(reply.content, list) or reply.stop_reason is None:
            raise ValueError("no content or stop_reason")
        text = "".join(block.text for block in reply.content if block.type == "text")
        reasoning = "\n\n".join(block.thinking for block in reply.content if block.type == "thinking")
        finish = _ANTHROPIC_STOP.get(reply.stop_reason, "other")
        usage = reply.usage
        return Answer(text=text, reasoning=reasoning, finish_reason=finish,
                      # Anthropic has no separate refusal message: what the model said while refusing is it
                      refusal=text if finish == "refusal" else "",
                      tokens_in=(usage.input_tokens or 0) if usage else 0,
                      tokens_out=(usage.output_tokens or 0) if usage else 0, model=reply.model or self.spec.model)

    def _address_hint(self) -> str:
        # the SDK appends /v1/messages itself, so a base URL ending in /v1 is the usual mistake
        return "check the teacher connection's base URL (for Anthropic, give it without /v1)"


def token_limit_field(spec: TeacherSpec) -> str:
    """OpenAI's own API refuses `max_tokens` for its reasoning models (o-series, gpt-5) and takes
    `max_completion_tokens` for all; compatible servers (llama.cpp, vLLM, proxies) have long read
    `max_tokens`, and not all of them know the newer name."""
    official = spec.provider == "openai" and (not spec.base_url or _host(spec.base_url) == "api.openai.com")
    return "max_completion_tokens" if official else "max_tokens"


def retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None when absent
    or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _openai_reasoning(message: Any) -> str:
    """vLLM, DeepSeek and llama.cpp put reasoning beside the content, as a field the SDK does not declare."""
    extra = getattr(message, "model_extra", None) or {}
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None) or extra.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _error_code(exc: Any) -> str:
    """The error's machine-readable code or type (OpenAI: `code`, Anthropic: `error.type`), "" when none."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    if not isinstance(body, dict):
        return ""
    return str(body.get("code") or body.get("type") or "")


def _unsupported_setting(exc: Any, detail: str) -> bool:
    """OpenAI's "Unsupported parameter/value" 400s, about a parameter the engine sends on every request."""
    code = _error_code(exc)
    body = getattr(exc, "body", None)
    param = body.get("param") if isinstance(body, dict) else None
    if code in ("unsupported_parameter", "unsupported_value") and param in _SENT_PARAMS:
        return True
    return bool(re.search(r"unsupported (parameter|value): '(%s)'" % "|".join(_SENT_PARAMS), detail, re.I))


def _about_model(detail: str, code: str) -> bool:
    """Whether a 404 is about the model rather than the address. A wrong path answers "Invalid URL (GET
    /v1/models/x)" or a web server's page, which may name the model in the path it echoes."""
    if code == "model_not_found":
        return True
    text = detail.lower()
    if "invalid url" in text or "<html" in text or "<!doctype" in text:
        return False
    return "model" in text


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words, from the transport error under the SDK's."""
    seen: list[str] = []
    cause: BaseException | None = exc
    while cause is not None and len(seen) < 8:
        seen.append(f"{type(cause).__name__} {cause}".lower())
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = " ".join(seen)
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "the host name does not resolve"
    if "ssl" in text or "certificate" in text:
        return "TLS failed"
    if "reset" in text or "disconnect" in text or "closed" in text or "remoteprotocolerror" in text:
        return "the connection was cut"
    return "connection failed"


def _cause(exc: BaseException) -> BaseException | None:
    """The SDK error is kept as the cause for the log's traceback, except a 401's: OpenAI quotes the key there."""
    return None if getattr(exc, "status_code", None) == 401 else exc


def _host(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or "").lower()


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
