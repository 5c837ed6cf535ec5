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
    llm = llama.load(model_path, lora_path or None)
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
