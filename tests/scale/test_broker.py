"""Celery on Redis for hours-long work: one visibility timeout everywhere, redelivery that never runs
a job twice, and liveness from the heartbeat plus `celery inspect ping`, not from redelivery."""
from __future__ import annotations

import json
import os
import re
from urllib.parse import urlparse

import pytest
import redis
from django.db import connection

from tests.conftest import _subprocess_env
from tests.e2e.test_finetune_e2e import wait_for
from tests.factories import make_user, pirate_records
from tests.scale.hosts import Host, HttpApi, start_web, start_worker

pytestmark = [pytest.mark.scale, pytest.mark.django_db(transaction=True)]
API = "/api/v1/finetune"


def _own_broker(offset: int) -> str:
    """A Redis database of this test's own: no other worker (the session's) takes its tasks."""
    broker = urlparse(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    url = f"redis://{broker.hostname}:{broker.port or 6379}/{(int(broker.path.strip('/') or 0) + offset) % 16}"
    redis.Redis.from_url(url).flushdb()
    return url


def test_redelivery_after_a_short_visibility_timeout_never_runs_a_job_twice(base_model, tmp_path):
    """With a 3 s visibility timeout Redis hands the training task out again every few seconds while
    it runs; each extra delivery finds the job claimed and does nothing."""
    from rest_framework.authtoken.models import Token

    env = {**_subprocess_env(), "TEST_REDIS_URL": _own_broker(9), "NEXUS_BROKER_VISIBILITY_TIMEOUT_S": "3"}
    host = Host(name="", address="127.0.0.1")
    try:
        api = HttpApi(start_web(host, env, _free_port()), Token.objects.get_or_create(user=make_user("dup"))[0].key)
        _, log = start_worker(host, env, "dup", "cpu,gpu", concurrency=2)
        records = "\n".join(json.dumps(r) for r in pirate_records(8)) + "\n"
        r = api.post(f"{API}/datasets", {"name": "pirates"}, files={"file": ("pirates.jsonl", records.encode())})
        assert r.status_code == 201, r.text
        dataset = wait_for(lambda: api.get(f"{API}/datasets/{r.json()['id']}").json(),
                           lambda d: d["status"] in ("ready", "error"), 180, "the dataset")
        body = {"name": "dup", "base_model": base_model.name, "dataset_id": dataset["id"],
                "lora_config": {"rank": 4, "alpha": 8}, "qlora_config": {"enabled": False},
                "training_config": {"batch_size": 4, "max_seq_length": 64, "max_steps": 4, "save_steps": 2,
                                    "warmup_steps": 0, "learning_rate": 1e-4}}
        r = api.post(f"{API}/jobs", body)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        done = wait_for(lambda: api.get(f"{API}/jobs/{job_id}").json(),
                        lambda j: j["status"] in ("completed", "failed", "cancelled"), 600, "the job")
        assert done["status"] == "completed", done["error"]
        duplicates = re.findall(rf"training {job_id} is not waiting \(duplicate delivery", log.read_text())
        assert duplicates, "Redis never redelivered the task: the test proves nothing"
        messages = [e["message"] for e in api.get(f"{API}/jobs/{job_id}/events?limit=1000").json()["results"]]
        assert sum(m.startswith("Preparing on") for m in messages) == 1, messages  # claimed once
        assert [m["step"] for m in api.get(f"{API}/jobs/{job_id}/metrics").json()["results"]] == [1, 2, 3, 4]
    finally:
        host.stop_all()


def test_a_worker_with_another_visibility_timeout_refuses_to_start(db, tmp_path):
    from nexus.jobs.workers import VISIBILITY_KEY

    url = _own_broker(10)
    env = {**_subprocess_env(), "TEST_REDIS_URL": url}
    host = Host(name="", address="127.0.0.1")
    try:
        start_worker(host, env, "first", "cpu")  # announces the default (7 days)
        assert int(redis.Redis.from_url(url).get(VISIBILITY_KEY)) == 7 * 24 * 3600
        proc, log = start_worker(host, {**env, "NEXUS_BROKER_VISIBILITY_TIMEOUT_S": "3600"}, "other", "cpu", wait=False)
        assert proc.wait(timeout=120) != 0
        assert "visibility_timeout is 3600 s but the running workers use 604800 s" in log.read_text()
    finally:
        host.stop_all()


def test_a_worker_silent_in_the_database_but_answering_ping_is_not_lost(db):
    """Liveness: a stale heartbeat row alone does not make a worker lost while it answers `celery
    inspect ping`; once it is killed it is."""
    from nexus.jobs.workers import workers_lost

    env = {**_subprocess_env(), "NEXUS_WORKER_HEARTBEAT_S": "3600"}  # one heartbeat at start, then silence
    host = Host(name="", address="127.0.0.1")
    try:
        proc, _ = start_worker(host, env, "quiet", "cpu")
        name = "quiet@host-quiet"
        with connection.cursor() as cursor:  # its row looks a minute old, as after a database outage
            cursor.execute("UPDATE nexus_workerheartbeat SET seen_at = now() - interval '60 seconds' WHERE name = %s", [name])
        assert name not in workers_lost()
        host.kill9(proc)
        assert name in workers_lost()
    finally:
        host.stop_all()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
