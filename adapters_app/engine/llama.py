"""llama.cpp through llama-cpp-python: load a GGUF (optionally with a LoRA adapter GGUF) and
generate. Django-free; used by export verification, compare and the benchmarks."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_LOAD_LOCK = threading.Lock()


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    load_seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": round(self.tokens_per_s, 2)}


def load(model_path: str | Path, lora_path: str | Path | None = None, *, n_ctx: int = 1024,
         n_threads: int | None = None):
    """A llama_cpp.Llama for a GGUF model file and an optional LoRA adapter GGUF."""
    from llama_cpp import Llama

    if not Path(model_path).is_file():
        raise FileNotFoundError(f"GGUF model file {model_path} does not exist")
    if lora_path and not Path(lora_path).is_file():
        raise FileNotFoundError(f"LoRA adapter GGUF {lora_path} does not exist")
    with _LOAD_LOCK:  # llama.cpp's backend init is not re-entrant
        return Llama(model_path=str(model_path), lora_path=str(lora_path) if lora_path else None, n_ctx=n_ctx,
                     n_threads=n_threads or max(1, os.cpu_count() or 1), seed=0, verbose=False)


def generate(llm, prompt: str, *, max_tokens: int = 32, chat: bool = True, load_seconds: float = 0.0) -> Generation:
    """Greedy generation; `chat` applies the GGUF's own chat template to a single user message."""
    start = time.perf_counter()
    if chat:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                         temperature=0.0, top_k=1, seed=0)
        text = out["choices"][0]["message"]["content"] or ""
    else:
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, top_k=1, seed=0)
        text = out["choices"][0]["text"]
    seconds = time.perf_counter() - start
    usage = out.get("usage") or {}
    return Generation(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                      completion_tokens=int(usage.get("completion_tokens", 0)), seconds=seconds,
                      load_seconds=load_seconds)


def load_and_generate(model_path: str | Path, prompt: str, *, lora_path: str | Path | None = None,
                      max_tokens: int = 32, chat: bool = True, n_ctx: int = 1024) -> Generation:
    start = time.perf_counter()
    llm = load(model_path, lora_path, n_ctx=n_ctx)
    try:
        return generate(llm, prompt, max_tokens=max_tokens, chat=chat, load_seconds=time.perf_counter() - start)
    finally:
        llm.close()
