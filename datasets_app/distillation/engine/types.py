"""The shapes every distillation engine module shares. Django-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

PROVIDERS = ("openai", "anthropic", "deployed")


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher (or judge) as the engine calls it. `api_key` is the plain key, in memory only:
    it is never put in a message, an exception, a log line or a repr."""

    provider: str  # openai | anthropic | deployed (an OpenAI-compatible llama.cpp server of a deployment)
    model: str
    api_key: str = field(default="", repr=False)
    base_url: str = ""  # "" = the provider's own API
    temperature: float = 0.7
    max_tokens: int = 2048
    timeout_s: float = 120.0
    label: str = ""  # how items and costs name it, e.g. "openai:gpt-4o-mini"

    @property
    def name(self) -> str:
        return self.label or f"{self.provider}:{self.model}"


@dataclass
class Answer:
    """One successful generation, normalized across providers."""

    text: str
    reasoning: str = ""  # reasoning the API returned apart from the text (thinking blocks, reasoning_content)
    finish_reason: str = "stop"  # stop | length (cut off by max_tokens) | refusal | content_filter | other
    refusal: str = ""  # the provider's own refusal message (OpenAI `message.refusal`), if any
    tokens_in: int = 0
    tokens_out: int = 0
    model: str = ""  # the model that answered, as the provider names it
    latency_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"text": self.text, "reasoning": self.reasoning, "finish_reason": self.finish_reason,
                "refusal": self.refusal, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "model": self.model, "latency_ms": self.latency_ms}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Answer":
        return cls(**{k: data[k] for k in ("text", "reasoning", "finish_reason", "refusal", "tokens_in", "tokens_out",
                                           "model", "latency_ms") if k in data})


class TeacherError(Exception):
    """A teacher call that did not give an answer. `message` is for users: it names the teacher
    and what went wrong, never the key."""

    def __init__(self, message: str, *, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class TeacherFatal(TeacherError):
    """Nothing will work until a person changes something: wrong key (401), no permission (403),
    unknown model (404), a base URL that is not an API. The job fails at once; no retries."""


class TeacherRetry(TeacherError):
    """May pass: 429 (`retry_after_s` from Retry-After / retry-after-ms when given), 5xx/529,
    timeouts, connection refused or cut. `kind`: rate_limit | server | timeout | connection."""

    def __init__(self, message: str, *, kind: str, retry_after_s: float | None = None, status: int | None = None):
        super().__init__(message, status=status, code=kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


class TeacherRejected(TeacherError):
    """This one request was refused (400: too long for the context, content policy, bad parameter):
    the item fails with this message, the job goes on."""


@dataclass
class ConnectionCheck:
    """What a "test connection" found: ok, or what failed (`problem`: key | unreachable | model |
    other) in a sentence, and how long the call took."""

    ok: bool
    message: str
    problem: str = ""
    latency_ms: int = 0
    models: list[str] = field(default_factory=list)


class TeacherClient(Protocol):
    spec: TeacherSpec

    def complete(self, messages: list[dict[str, str]], *, system: str = "", max_tokens: int | None = None,
                 temperature: float | None = None) -> Answer:
        """One chat generation. `messages`: [{"role": "user"|"assistant", "content": str}], no system
        message (the system prompt goes in `system`). The SDK's own retries are off: the caller
        retries (it has to count every attempt against the rate limit). Raises TeacherFatal,
        TeacherRetry or TeacherRejected."""
        ...

    def check(self) -> ConnectionCheck:
        """One cheap call (the model's metadata, no tokens generated) that says whether the key, the
        address and the model work."""
        ...
