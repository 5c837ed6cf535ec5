"""A local server that speaks the OpenAI and Anthropic HTTP protocols, with their failure modes.

Tests of teacher-model calls point the official SDKs' ``base_url`` here instead of at a provider:
the SDKs do their real HTTP, auth, error mapping and retries, while the test scripts what the
"provider" does and reads what it was asked from memory. It serves from a daemon thread of the test
process on 127.0.0.1, so Celery worker subprocesses reach it over TCP too.

    with FakeTeacher(api_key="k", models=["gpt-4o-mini"], script=["ok", ("rate_limit", 2)]) as teacher:
        client = openai.OpenAI(api_key="k", base_url=teacher.openai_base_url, max_retries=0)
        ...
        assert teacher.count("/v1/chat/completions", status=429) == 1
"""
from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Outcome = str | tuple[str, float]
"""One planned answer: "ok", "refusal", "empty", "cut_off", "error500", "overloaded", "disconnect",
"rate_limit" or ("rate_limit", retry_after_s), "slow" or ("slow", seconds)."""
Script = Callable[[dict[str, Any]], Outcome] | Iterable[Outcome]
Responder = Callable[[list[dict[str, Any]], str], str]
Reply = tuple[int, dict[str, Any], dict[str, str]]

OUTCOMES = frozenset(
    {"ok", "refusal", "empty", "cut_off", "error500", "overloaded", "disconnect", "rate_limit", "slow"})
REFUSAL = "I'm sorry, but I can't help with that."
DEFAULT_MODELS = ("gpt-4o-mini", "claude-haiku-4-5")
CHAT_PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
MODELS_PATH = "/v1/models"


def _outcome(value: Outcome) -> tuple[str, float | None]:
    """Splits an outcome into its kind and argument, refusing kinds the server does not know."""
    kind, arg = (value, None) if isinstance(value, str) else (value[0], float(value[1]))
    if kind not in OUTCOMES:
        raise ValueError(f"unknown fake-teacher outcome {value!r}; known: {sorted(OUTCOMES)}")
    return kind, arg


def _text(content: Any) -> str:
    """The text of a message's content, given as a string or as a list of typed parts (both APIs)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: one token a word."""
    return len(text.split())


class FakeTeacher:
    """One fake provider endpoint serving both protocols; every setting may change while it runs.

    ``script`` is consumed by the generation endpoints only (chat/completions and messages), one
    outcome a request that passed auth and model checks; an exhausted list means "ok". A callable
    script is asked with the request's record (path, api, model, messages, prompt, body, n).
    """

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        models: Iterable[str] = DEFAULT_MODELS,
        latency_s: float = 0.0,
        slow_s: float = 10.0,
        script: Script = (),
        responder: Responder | None = None,
    ) -> None:
        self.api_key = api_key
        self.models = list(models)
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.responder = responder
        self._lock = threading.Lock()
        self._script_fn: Callable[[dict[str, Any]], Outcome] | None = None
        self._planned: deque[Outcome] = deque()
        self.script = script
        self._requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> FakeTeacher:
        """Serves on a free port, or again on the same port after stop(), so clients keep their URL."""
        self._stopped.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.teacher = self  # type: ignore[attr-defined]
        self._server, self.port = server, server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-teacher-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Refuses new connections and cuts open ones, as a teacher that vanishes mid-run would.

        Kept-alive connections are cut too: otherwise the SDKs' pooled connections would still be answered.
        """
        if self._server is None:
            return
        with self._lock:
            self._stopped.set()
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    base_url = openai_base_url

    @property
    def anthropic_base_url(self) -> str:
        """Without /v1: the Anthropic SDK appends /v1/messages itself."""
        return f"http://127.0.0.1:{self.port}"

    # -- behaviour --------------------------------------------------------------------------------

    @property
    def script(self) -> Callable[[dict[str, Any]], Outcome] | list[Outcome]:
        with self._lock:
            return self._script_fn or list(self._planned)

    @script.setter
    def script(self, value: Script) -> None:
        """Replaces the plan; a list is checked now, so a typo fails in the test and not as a 500."""
        with self._lock:
            if callable(value):
                self._script_fn, self._planned = value, deque()
            else:
                planned = list(value)
                for item in planned:
                    _outcome(item)
                self._script_fn, self._planned = None, deque(planned)

    def _next_outcome(self, record: dict[str, Any]) -> tuple[str, float | None]:
        """Takes the next planned outcome; n is how many generation requests have arrived, this one included."""
        with self._lock:
            record["n"] = sum(1 for r in self._requests if r["path"] in (CHAT_PATH, MESSAGES_PATH))
            if self._script_fn is None:
                return _outcome(self._planned.popleft() if self._planned else "ok")
            script_fn = self._script_fn
        return _outcome(script_fn(record))

    def _answer_text(self, messages: list[dict[str, Any]], model: str, prompt: str) -> str:
        return self.responder(messages, model) if self.responder else f"Answer to: {prompt}"

    # -- counters ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of every request: time, ended, method, path, api, model, messages, prompt,
        body, headers, outcome, status (None while in flight or when the server dropped the connection)."""
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def max_in_flight(self) -> int:
        """The most requests served at once since start or reset()."""
        return self._max_in_flight

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def count(self, path: str | None = None, status: int | None = None) -> int:
        return len(self._select(path, status))

    def calls_for(self, prompt_text: str, status: int | None = None) -> list[dict[str, Any]]:
        """The generation requests whose last user message is exactly ``prompt_text``."""
        return [r for r in self._select(None, status) if r["prompt"] == prompt_text]

    def repeated_prompts(self, status: int | None = 200) -> dict[str, int]:
        """Prompts asked more than once (by default: answered more than once, i.e. paid twice)."""
        counts: dict[str, int] = {}
        for r in self._select(None, status):
            if r["prompt"] is not None:
                counts[r["prompt"]] = counts.get(r["prompt"], 0) + 1
        return {p: n for p, n in counts.items() if n > 1}

    def times(self, path: str | None = None, status: int | None = None) -> list[float]:
        """Arrival times (time.time()) in order, for rate and pacing checks."""
        return sorted(r["time"] for r in self._select(path, status))

    def max_in_window(self, window_s: float = 60.0, path: str | None = None, status: int | None = None) -> int:
        """The most requests that arrived within any ``window_s`` span ("never more than N a minute")."""
        times, best, first = self.times(path, status), 0, 0
        for last, t in enumerate(times):
            while t - times[first] >= window_s:
                first += 1
            best = max(best, last - first + 1)
        return best

    def reset(self) -> None:
        """Forgets requests and the in-flight high-water mark, e.g. between phases of one test."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight

    def _select(self, path: str | None, status: int | None) -> list[dict[str, Any]]:
        return [r for r in self.requests
                if (path is None or r["path"] == path) and (status is None or r["status"] == status)]

    # -- bookkeeping used by the handler ----------------------------------------------------------

    def _begin(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(record)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _end(self, record: dict[str, Any], status: int | None) -> None:
        with self._lock:
            record["ended"], record["status"] = time.time(), status
            self._in_flight -= 1

    def _track(self, conn: socket.socket, open_: bool) -> bool:
        """Registers a connection so stop() can cut it; False when the server is already stopping."""
        with self._lock:
            if not open_:
                self._connections.discard(conn)
                return True
            if self._stopped.is_set():
                return False
            self._connections.add(conn)
            return True


class _Dropped(Exception):
    """The connection is to be closed without an answer."""


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection; HTTP/1.1 keep-alive, as the SDKs pool connections."""

    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def teacher(self) -> FakeTeacher:
        return self.server.teacher  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes; without this, Nagle holds the body until the client's
        # delayed ACK of the headers (about 40 ms an answer, a cost no real provider adds)
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.teacher._track(self.connection, True):
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self.teacher._track(self.connection, False)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests read the counters instead."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    # -- dispatch ---------------------------------------------------------------------------------

    def _serve(self) -> None:
        path = self.path.split("?", 1)[0]
        anthropic = path == MESSAGES_PATH or "anthropic-version" in self.headers
        record: dict[str, Any] = {
            "time": time.time(), "ended": None, "method": self.command, "path": path,
            "api": "anthropic" if anthropic else "openai", "model": None, "messages": None, "prompt": None,
            "body": None, "headers": dict(self.headers), "outcome": None, "status": None,
        }
        teacher = self.teacher
        teacher._begin(record)
        reply: Reply | None = None
        try:
            reply = self._route(record, self.rfile.read(int(self.headers.get("Content-Length") or 0)), anthropic)
        except _Dropped:
            pass
        finally:
            # counted out before the answer goes: a client holding its answer sees this request done
            teacher._end(record, reply[0] if reply else None)
        if reply is None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self._send(*reply)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, record: dict[str, Any], raw: bytes, anthropic: bool) -> Reply:
        """Auth first, then the body, then the endpoint: the order in which the providers refuse."""
        path, teacher = record["path"], self.teacher
        auth_error = self._check_auth(anthropic)
        if auth_error:
            return auth_error
        try:
            record["body"] = json.loads(raw) if raw else None
        except ValueError:
            return _error(400, "request body is not valid JSON", anthropic)
        if self.command == "POST" and path in (CHAT_PATH, MESSAGES_PATH):
            return self._generate(record, record["body"], anthropic=path == MESSAGES_PATH)
        if self.command == "GET" and path == MODELS_PATH:
            return 200, _model_list(teacher.models, anthropic), {}
        if self.command == "GET" and path.startswith(MODELS_PATH + "/"):
            model = record["model"] = path[len(MODELS_PATH) + 1:]
            if model not in teacher.models:
                return _model_not_found(model, anthropic)
            return 200, _model_info(model, anthropic), {}
        message = "Not found" if anthropic else f"Invalid URL ({self.command} {path})"
        return _error(404, message, anthropic, anthropic_type="not_found_error")

    def _check_auth(self, anthropic: bool) -> Reply | None:
        """OpenAI: ``Authorization: Bearer``. Anthropic: ``x-api-key`` (or Bearer, which its current
        SDK sends) plus a required ``anthropic-version`` header."""
        bearer = self.headers.get("Authorization", "")
        given = bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None
        if anthropic:
            given = self.headers.get("x-api-key") or given
            if given is None:
                return _error(401, "x-api-key header is required", True, anthropic_type="authentication_error")
            if given != self.teacher.api_key:
                return _error(401, "invalid x-api-key", True, anthropic_type="authentication_error")
            if not self.headers.get("anthropic-version"):
                return _error(400, "anthropic-version: header is required", True)
            return None
        if given is None:
            return _error(401, "You didn't provide an API key. You need to provide your API key in an "
                          "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", False)
        if given != self.teacher.api_key:
            return _error(401, f"Incorrect API key provided: {given[:3]}***.", False, openai_code="invalid_api_key")
        return None

    # -- generation -------------------------------------------------------------------------------

    def _generate(self, record: dict[str, Any], body: Any, anthropic: bool) -> Reply:
        teacher = self.teacher
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "model and messages are required", anthropic)
        if anthropic and not isinstance(body.get("max_tokens"), int):
            return _error(400, "max_tokens: Field required", True)
        model, messages = body["model"], body["messages"]
        user_turns = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        record.update(model=model, messages=messages, prompt=_text(user_turns[-1].get("content")) if user_turns else "")
        if model not in teacher.models:
            return _model_not_found(model, anthropic)
        try:
            kind, arg = teacher._next_outcome(record)
        except Exception as exc:  # a broken script callable: say so in the error the SDK raises
            record["outcome"] = "script_error"
            return _error(500, f"fake teacher script failed: {exc!r}", anthropic)
        record["outcome"] = kind if arg is None else (kind, arg)

        if kind == "disconnect":
            raise _Dropped
        if kind == "rate_limit":
            return _error(429, "Rate limit reached for requests. Please try again later.", anthropic,
                          openai_type="requests", openai_code="rate_limit_exceeded", anthropic_type="rate_limit_error",
                          headers={"Retry-After": f"{1.0 if arg is None else arg:g}"})
        if kind == "error500":
            return _error(500, "The server had an error while processing your request.", anthropic,
                          openai_type="server_error", anthropic_type="api_error")
        if kind == "overloaded":  # Anthropic's own overload status is 529; OpenAI answers 503
            return _error(529 if anthropic else 503, "Overloaded", anthropic,
                          openai_type="server_error", anthropic_type="overloaded_error")
        pause = (teacher.slow_s if arg is None else arg) if kind == "slow" else teacher.latency_s
        if pause > 0 and teacher._stopped.wait(pause):
            raise _Dropped  # stopped while "thinking": vanish as a dead teacher would

        if kind == "refusal":
            text = REFUSAL
        elif kind == "empty":
            text = ""
        else:
            text = teacher._answer_text(messages, model, record["prompt"])
        words, limit = _tokens(text), body.get("max_tokens") or body.get("max_completion_tokens")
        keep = max(1, words // 2) if kind == "cut_off" else words
        if isinstance(limit, int):
            keep = min(keep, limit)
        cut = keep < words or kind == "cut_off"
        text = " ".join(text.split()[:keep]) if keep < words else text
        asked = [_text(m.get("content")) for m in messages if isinstance(m, dict)] + [_text(body.get("system"))]
        usage_in, usage_out = _tokens(" ".join(asked)), _tokens(text)
        if anthropic:
            return 200, {
                "id": f"msg_fake{next(teacher._ids):08d}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}] if text else [],
                "stop_reason": "max_tokens" if cut else "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
            }, {}
        return 200, {
            "id": f"chatcmpl-fake{next(teacher._ids):08d}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None, "finish_reason": "length" if cut else "stop",
            }],
            "usage": {"prompt_tokens": usage_in, "completion_tokens": usage_out, "total_tokens": usage_in + usage_out},
        }, {}

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _error(
    status: int,
    message: str,
    anthropic: bool,
    *,
    openai_type: str = "invalid_request_error",
    openai_code: str | None = None,
    anthropic_type: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> Reply:
    """An error body in the provider's own shape, which the SDKs parse into ``exc.body``."""
    if anthropic:
        return status, {"type": "error", "error": {"type": anthropic_type, "message": message}}, headers or {}
    error = {"message": message, "type": openai_type, "param": None, "code": openai_code}
    return status, {"error": error}, headers or {}


def _model_not_found(model: str, anthropic: bool) -> Reply:
    return _error(404, f"model not found: the model `{model}` does not exist or you do not have access to it.",
                  anthropic, openai_code="model_not_found", anthropic_type="not_found_error")


def _model_list(models: list[str], anthropic: bool) -> dict[str, Any]:
    data = [_model_info(m, anthropic) for m in models]
    if anthropic:
        return {"data": data, "has_more": False, "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None}
    return {"object": "list", "data": data}


def _model_info(model: str, anthropic: bool) -> dict[str, Any]:
    if anthropic:
        return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z",
                "lifecycle": "active"}
    return {"id": model, "object": "model", "created": 1735689600, "owned_by": "fake-teacher"}
