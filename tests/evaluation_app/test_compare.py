"""Base vs adapter runs on a CPU worker; the web request waits for it, and says so when none answers."""
from __future__ import annotations

import pytest

from tests.factories import make_adapter, make_job

pytestmark = pytest.mark.django_db


def test_a_comparison_no_worker_answers_is_a_504_that_says_why(api, user, base_model, monkeypatch):
    from evaluation_app import services, tasks

    adapter = make_adapter(make_job(user, base_model))
    adapter.gguf_path = "adapters/x/adapter.gguf"
    adapter.save(update_fields=["gguf_path"])
    sent = []
    monkeypatch.setattr(tasks.compare_on_worker, "apply_async", lambda *a, **kw: sent.append((a, kw)))
    monkeypatch.setattr(services, "COMPARE_WAIT_S", 1)
    r = api.get(f"/api/v1/finetune/adapters/{adapter.pk}/compare", {"prompt": "Hi", "max_tokens": 5})
    assert r.status_code == 504 and "No CPU worker answered within 1 s" in r.json()["error"]["message"]
    (args, options), = sent
    assert args[0][1:] == (base_model.gguf_path, "adapters/x/adapter.gguf", "Hi", 5)
    assert options["queue"] == "cpu"


def test_the_worker_side_reports_a_missing_file_as_a_sentence(settings):
    import json

    import redis

    from evaluation_app.tasks import compare_on_worker

    compare_on_worker.run("nexus:reply:test-missing", "/tmp/nexus-missing/base.gguf", "/tmp/nexus-missing/adapter.gguf", "Hi", 4)
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    body = json.loads(client.lpop("nexus:reply:test-missing"))
    assert body["ok"] is False and body["status"] == 409 and body["code"] == "load_failed"
    assert "could not load the base model" in body["message"] and "/tmp/" not in body["message"]
