"""Base vs adapter through llama.cpp, on a worker: loaded models are kept in a small cache of the
worker process (loading is the slow part), and one lock serializes generation (a Llama object is
not safe to use from two threads). Django-free."""
from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from typing import Any

from adapters_app.engine import llama

CACHE_SIZE = 3
CONTEXT_TOKENS = 4096  # prompt + answer; a longer conversation fails that comparison with a message
_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
_lock = threading.Lock()


@atexit.register
def _close_all() -> None:
    # close while llama.cpp's library is still loaded; at interpreter teardown Llama.__del__ finds it gone
    with _lock:
        while _cache:
            _cache.popitem()[1].close()


def _cached_llm(model_path: str, lora_path: str) -> tuple[Any, float]:
    """A loaded Llama for (model, lora) and the seconds its load took now (0 when cached); caller holds _lock."""
    key = (model_path, lora_path)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key], 0.0
    start = time.perf_counter()
    llm = llama.load(model_path, lora_path or None, n_ctx=CONTEXT_TOKENS)
    _cache[key] = llm
    while len(_cache) > CACHE_SIZE:
        _, old = _cache.popitem(last=False)
        old.close()
    return llm, time.perf_counter() - start


class LoadFailed(RuntimeError):
    def __init__(self, side: str, exc: Exception):
        super().__init__(f"llama.cpp could not load the {side} model: {exc}")
        self.side = side


def compare(*, model_path: str, lora_path: str, prompt: str, max_tokens: int) -> dict[str, dict]:
    """The same prompt as a chat message, greedy, through the base GGUF and base + adapter GGUF."""
    out = {}
    with _lock:
        for side, lora in (("base", ""), ("adapter", lora_path)):
            try:
                llm, load_seconds = _cached_llm(model_path, lora)
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                raise LoadFailed(side, exc) from exc
            llm.reset()
            out[side] = llama.generate(llm, prompt, max_tokens=max_tokens, load_seconds=load_seconds).as_dict()
    return out


# -- comparison sessions: a model of a session, loaded once per run ---------------------------------


class GenerationError(RuntimeError):
    """One prompt could not be answered (too long for the context, a server error): that
    comparison fails with this message, the run goes on."""


def _sampling_kwargs(sampling: dict[str, Any], seed: int) -> dict[str, Any]:
    return {"max_tokens": int(sampling["max_tokens"]), "temperature": float(sampling["temperature"]),
            "top_p": float(sampling["top_p"]), "top_k": int(sampling["top_k"]),
            "repeat_penalty": float(sampling["repeat_penalty"]), "seed": int(seed)}


def _pending_turns(messages: list[dict[str, str]]) -> list[int]:
    """Indices of user turns the model answers: those not followed by a given assistant turn."""
    return [i for i, m in enumerate(messages)
            if m["role"] == "user" and (i + 1 == len(messages) or messages[i + 1]["role"] != "assistant")]


class SessionModel:
    """One side of a comparison: `describe` is the design's ModelResponse identity (model_id,
    model_name, is_finetuned, adapter_id). `answer` runs a conversation: each user turn without a
    given answer is answered by this model, with its own earlier answers in context."""

    def __init__(self, describe: dict[str, Any]):
        self.describe = describe

    def _chat(self, messages: list[dict[str, str]], kwargs: dict[str, Any]) -> tuple[str, str, int, int]:
        raise NotImplementedError

    def answer(self, messages: list[dict[str, str]], *, system: str, sampling: dict[str, Any], seed: int) -> dict:
        kwargs = _sampling_kwargs(sampling, seed)
        history = [{"role": "system", "content": system}] if system.strip() else []
        turns, tokens, prompt_tokens, finish = [], 0, 0, "stop"
        start = time.perf_counter()
        for i, message in enumerate(messages):
            history.append(message)
            if i in _pending_turns(messages):
                text, finish, n_prompt, n_out = self._chat(history, kwargs)
                history.append({"role": "assistant", "content": text})
                turns.append(text)
                tokens += n_out
                prompt_tokens = n_prompt
        seconds = time.perf_counter() - start
        return {**self.describe, "response": turns[-1] if turns else "", "turns": turns if len(turns) > 1 else [],
                "tokens_generated": tokens, "prompt_tokens": prompt_tokens,
                "generation_time_ms": round(seconds * 1000, 1),
                "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else 0.0, "finish_reason": finish}

    def close(self) -> None:
        pass


class LocalModel(SessionModel):
    """A GGUF (and an adapter GGUF) in this process through llama.cpp, from the worker's cache of
    loaded models: loaded once, then every prompt of the run goes through it."""

    def __init__(self, describe: dict[str, Any], *, model_path: str, lora_path: str = ""):
        super().__init__(describe)
        self.model_path, self.lora_path = model_path, lora_path
        with _lock:
            try:
                self.llm, self.load_seconds = _cached_llm(model_path, lora_path)
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                raise LoadFailed(describe.get("model_name", "a"), exc) from exc

    def _chat(self, messages, kwargs):  # noqa: ANN001
        n_ctx = self.llm.n_ctx()
        with _lock:
            try:
                out = self.llm.create_chat_completion(messages=messages, **kwargs)
            except ValueError as exc:  # llama-cpp-python: "Requested tokens (...) exceed context window of ..."
                raise GenerationError(f"{self.describe['model_name']}: {exc} (context {n_ctx} tokens)") from exc
        choice, usage = out["choices"][0], out.get("usage") or {}
        return (choice["message"]["content"] or "", choice.get("finish_reason") or "stop",
                int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))


class RemoteModel(SessionModel):
    """A running OpenAI-compatible llama.cpp server (a deployment), through the openai SDK; prompts of
    a batch are sent at once (the server queues them)."""

    def __init__(self, describe: dict[str, Any], *, base_url: str, api_key: str, model: str, timeout_s: float = 600):
        super().__init__(describe)
        import openai

        self.model = model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=2)

    def _chat(self, messages, kwargs):  # noqa: ANN001
        import openai

        extra = {"top_k": kwargs.pop("top_k"), "repeat_penalty": kwargs.pop("repeat_penalty")}
        try:
            out = self.client.chat.completions.create(model=self.model, messages=messages, extra_body=extra, **kwargs)
        except openai.APIError as exc:
            raise GenerationError(f"{self.describe['model_name']}: {type(exc).__name__}: "
                                  f"{str(getattr(exc, 'message', exc))[:300]}") from exc
        choice = out.choices[0]
        usage = out.usage
        return (choice.message.content or "", choice.finish_reason or "stop",
                usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

    def close(self) -> None:
        self.client.close()


def answer_batch(model: SessionModel, prompts: list[dict[str, Any]], *, system: str, sampling: dict[str, Any],
                 concurrent: bool, should_stop=lambda: False) -> list[dict | GenerationError | None]:  # noqa: ANN001
    """Each prompt ({"messages", "seed"}) through one model: in order for a local model (one
    llama.cpp context), at once for a server. A failed prompt gives its GenerationError; a prompt
    not started because `should_stop()` said so gives None."""
    def one(p: dict[str, Any]) -> dict | GenerationError | None:
        if should_stop():
            return None
        try:
            return model.answer(p["messages"], system=system, sampling=sampling, seed=p["seed"])
        except GenerationError as exc:
            return exc

    if not concurrent or len(prompts) < 2:
        return [one(p) for p in prompts]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(prompts))) as pool:
        return list(pool.map(one, prompts))
