"""Base vs adapter, side by side, in this process through llama.cpp (fine for small models)."""
from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from typing import Any

from adapters_app.engine import llama
from adapters_app.models import LoRAAdapter
from deployments_app.services import gguf_local_path
from nexus.errors import NexusError

CACHE_SIZE = 3
_cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
# One lock for the cache and for generation: a Llama object is not safe to use from two threads.
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


def adapter_compare(*, adapter: LoRAAdapter, prompt: str, max_tokens: int = 64) -> dict[str, Any]:
    """The same prompt (as a chat message, greedy) through the base GGUF and base + adapter GGUF."""
    if not prompt.strip():
        raise NexusError("prompt: give a prompt to compare on", code="validation_error", details={"prompt": "empty"})
    base = adapter.base_model
    if not base.gguf_path:
        raise NexusError(f"The base model '{base.name}' has no GGUF file to run with llama.cpp.", code="no_gguf",
                         status_code=409)
    if not adapter.gguf_path:
        raise NexusError(f"Adapter '{adapter}' has no GGUF export yet. Export it first: POST "
                         f"/api/v1/finetune/adapters/{adapter.pk}/export with {{\"kind\": \"adapter_gguf\"}}, "
                         "then compare again when the export has completed.", code="no_gguf", status_code=409)
    model_path, lora_path = gguf_local_path(base.gguf_path), gguf_local_path(adapter.gguf_path)
    out: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    with _lock:
        for side, lora in (("base", ""), ("adapter", lora_path)):
            try:
                llm, load_seconds = _cached_llm(model_path, lora)
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                raise NexusError(f"llama.cpp could not load the {side} model: {exc}", code="load_failed",
                                 status_code=409) from exc
            llm.reset()
            gen = llama.generate(llm, prompt, max_tokens=max_tokens, load_seconds=load_seconds)
            out[side] = {"serves": base.name if side == "base" else f"{base.name} + {adapter}", **gen.as_dict()}
    return out
