"""Evaluation: base vs adapter, side by side. The web process checks the request and waits for a
CPU worker to run it (llama.cpp never runs in the web process)."""
from __future__ import annotations

import json
import secrets
from typing import Any

from django.conf import settings

from adapters_app.models import LoRAAdapter
from nexus.errors import NexusError

COMPARE_WAIT_S = 180


def adapter_compare(*, adapter: LoRAAdapter, prompt: str, max_tokens: int = 64,
                    wait_s: float | None = None) -> dict[str, Any]:
    """The same prompt (as a chat message, greedy) through the base GGUF and base + adapter GGUF,
    run on a CPU worker; this request waits for its answer. Nothing is stored."""
    from evaluation_app.tasks import compare_on_worker

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
    wait_s = wait_s or COMPARE_WAIT_S
    reply_key = f"nexus:reply:compare:{secrets.token_hex(12)}"
    try:
        compare_on_worker.apply_async((reply_key, base.gguf_path, adapter.gguf_path, prompt, max_tokens), queue="cpu",
                                      expires=wait_s)
        import redis

        waiting = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=wait_s + 10, socket_connect_timeout=5)
        answer = waiting.blpop([reply_key], timeout=wait_s)
    except Exception as exc:  # noqa: BLE001 - kombu and redis raise several types for an unreachable broker
        raise NexusError("The comparison could not be sent to a worker: the task queue cannot be reached.",
                         code="queue_unavailable", status_code=503) from exc
    if answer is None:
        raise NexusError(f"No CPU worker answered within {wait_s:.0f} s (all busy, or none running); try again.",
                         code="worker_timeout", status_code=504)
    body = json.loads(answer[1])
    if not body["ok"]:
        raise NexusError(body["message"], code=body["code"], status_code=body["status"])
    out: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    for side in ("base", "adapter"):
        out[side] = {"serves": base.name if side == "base" else f"{base.name} + {adapter}", **body["result"][side]}
    return out
