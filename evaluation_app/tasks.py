"""Evaluation work on CPU workers: the base-vs-adapter comparison answers a waiting request."""
from __future__ import annotations

import json

from celery import shared_task
from django.conf import settings


@shared_task(name="evaluation.compare", acks_late=False, ignore_result=True, soft_time_limit=600, time_limit=660)
def compare_on_worker(reply_key: str, model_name: str, lora_name: str, prompt: str, max_tokens: int) -> None:
    """Run the comparison here and push the outcome to `reply_key` (the web request waits on it)."""
    from deployments_app.services import gguf_local_path
    from evaluation_app.engine.compare import LoadFailed, compare
    from nexus.control import redis_client
    from nexus.errors import NexusError
    from nexus.redact import public_error

    try:
        body = {"ok": True, "result": compare(model_path=gguf_local_path(model_name), lora_path=gguf_local_path(lora_name),
                                              prompt=prompt, max_tokens=max_tokens)}
    except LoadFailed as exc:
        body = {"ok": False, "code": "load_failed", "status": 409, "message": public_error(exc, what="The comparison")}
    except NexusError as exc:
        body = {"ok": False, "code": exc.code, "status": exc.status_code, "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - the waiting request gets a sentence; the log gets the traceback
        body = {"ok": False, "code": "compare_failed", "status": 500, "message": public_error(exc, what="The comparison")}
    client = redis_client(settings.CELERY_BROKER_URL)
    client.rpush(reply_key, json.dumps(body))
    client.expire(reply_key, 300)
