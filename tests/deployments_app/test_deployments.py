"""Deployments with real llama.cpp server processes, a real Celery worker, Postgres and Redis:
start, answer through the Nexus proxy (plain and streamed, Bearer tokens), A/B routing by weight,
reaping a killed server, surviving a killed worker, team scoping, and the adapter paths."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from deployments_app.engine import serving
from tests.e2e.test_finetune_e2e import wait_for
from tests.factories import make_adapter, make_deployment, make_job

API = "/api/v1/finetune"
CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}
worker_test = pytest.mark.django_db(transaction=True)


def _server_pids() -> set[int]:
    """llama.cpp servers started under this test run's data folder (not other runs' on this machine)."""
    from django.conf import settings

    mark = f"{serving.LOG_ENV}={settings.NEXUS_DATA_DIR}/".encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"llama_cpp.server" in (entry / "cmdline").read_bytes() and mark in (entry / "environ").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(autouse=True)
def no_leaked_servers():
    """Every llama.cpp server a test started is gone after it (stopped by the test, else killed here)."""
    before = _server_pids()
    yield
    leaked = _server_pids() - before
    for pid in leaked:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def bearer_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {Token.objects.get_or_create(user=user)[0].key}")
    return client


def deploy(api, **body) -> dict:
    r = api.post(f"{API}/deployments", {"base_model": "SmolLM2-135M-Instruct", **body}, format="json")
    assert r.status_code == 201, r.content
    return r.json()


def wait_running(api, deployment_id: int, timeout: float = 180) -> dict:
    d = wait_for(lambda: api.get(f"{API}/deployments/{deployment_id}").json(),
                 lambda d: d["status"] not in ("starting",), timeout, f"deployment {deployment_id} to start")
    assert d["status"] == "running", d["error"]
    return d


def stop(api, deployment_id: int) -> dict:
    """Ask for the stop (202: the worker on its host stops the servers), wait until it is done."""
    r = api.post(f"{API}/deployments/{deployment_id}/stop")
    assert r.status_code in (200, 202), r.content
    return wait_for(lambda: api.get(f"{API}/deployments/{deployment_id}").json(),
                    lambda d: d["status"] != "stopping", 60, f"deployment {deployment_id} to stop")


def sse_text(response) -> tuple[str, list[str]]:
    raw = b"".join(response.streaming_content).decode()
    pieces = []
    for line in raw.splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            pieces.append(json.loads(line[5:])["choices"][0]["delta"].get("content") or "")
    return raw, pieces


@worker_test
def test_base_deployment_starts_answers_plain_and_streamed_and_stops(celery_worker_process, base_model, user, api):
    from deployments_app.models import DeploymentRequest

    d = deploy(api, name="base only")
    assert d["status"] == "starting" and d["arms"][0]["serves"] == base_model.name and d["arms"][0]["weight"] == 100
    d = wait_running(api, d["id"])
    arm = d["arms"][0]
    assert serving.is_alive(arm["pid"], arm["port"]) and d["endpoint"] == f"{API}/deployments/{d['id']}/v1"
    assert arm["pid"] in _server_pids()  # the leak guard sees this run's servers

    status = api.get(f"{API}/deployments/{d['id']}/status").json()
    assert status["status"] == "running" and status["arms"][0]["healthy"] and status["arms"][0]["alive"]

    client = bearer_client(user)  # what an OpenAI client sends
    r = client.post(f"{d['endpoint']}/chat/completions", CHAT, format="json")
    assert r.status_code == 200, r.content
    assert r["X-Nexus-Arm"] == "A"
    body = r.json()
    assert body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"] > 0
    r = client.post(f"{d['endpoint']}/completions", {"prompt": "The sky is", "max_tokens": 4}, format="json")
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    r = client.get(f"{d['endpoint']}/models")
    assert r.status_code == 200 and r.json()["data"]

    r = client.post(f"{d['endpoint']}/chat/completions", {**CHAT, "stream": True}, format="json")
    assert r.status_code == 200 and r["Content-Type"].startswith("text/event-stream")
    raw, pieces = sse_text(r)
    assert "data: [DONE]" in raw and len([p for p in pieces if p]) >= 2

    rows = list(DeploymentRequest.objects.filter(deployment_id=d["id"]).order_by("created_at"))
    # generations are recorded; GET /v1/models is a read and records nothing
    assert [(x.endpoint, x.status_code, x.arm.label) for x in rows] == [
        ("chat/completions", 200, "A"), ("completions", 200, "A"), ("chat/completions", 200, "A")]
    assert rows[0].prompt_tokens > 0 and rows[0].completion_tokens == body["usage"]["completion_tokens"]
    assert rows[2].completion_tokens == len([p for p in pieces if p]) and rows[2].latency_ms > 0
    assert rows[0].user == user

    log = api.get(f"{API}/deployments/{d['id']}/logs", {"arm": "A"}).json()["log"]
    assert "llama_cpp.server" in log and str(arm["port"]) in log

    # the server itself takes only requests with its own key, which only Nexus's proxy holds
    import requests

    from deployments_app.models import DeploymentArm

    row = DeploymentArm.objects.get(deployment_id=d["id"], label="A")
    key = row.api_key
    direct = f"http://127.0.0.1:{arm['port']}/v1/chat/completions"
    assert requests.post(direct, json=CHAT, timeout=30).status_code == 401  # another local user, no key
    assert requests.post(direct, json=CHAT, headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
    assert requests.post(direct, json=CHAT, headers={"Authorization": f"Bearer {key}"}, timeout=60).status_code == 200
    assert len(key) >= 40 and key not in row.api_key_encrypted  # encrypted at rest
    assert key.encode() not in Path(f"/proc/{arm['pid']}/cmdline").read_bytes()  # not visible to `ps`
    assert key not in json.dumps(api.get(f"{API}/deployments/{d['id']}").json()) and key not in log
    detail = api.get(f"{API}/deployments/{d['id']}").json()
    assert detail["arms"][0]["stats"]["requests"] == 3 and len(detail["recent_requests"]) == 3

    stopped = stop(api, d["id"])
    assert stopped["status"] == "stopped" and not serving.is_alive(arm["pid"], arm["port"])
    r = client.post(f"{d['endpoint']}/chat/completions", CHAT, format="json")
    assert r.status_code == 409 and "start it first" in r.json()["error"]["message"]
    # and it starts again
    assert api.post(f"{API}/deployments/{d['id']}/start").status_code == 202
    again = wait_running(api, d["id"])
    assert client.post(f"{d['endpoint']}/chat/completions", CHAT, format="json").status_code == 200
    stop(api, d["id"])
    assert not serving.is_alive(again["arms"][0]["pid"], again["arms"][0]["port"])


@worker_test
def test_ab_split_routes_by_weight_and_records_which_arm_served(celery_worker_process, base_model, user, api):
    from deployments_app.models import DeploymentRequest

    d = deploy(api, name="ab", arms=[{"weight": 70}, {"weight": 30}], settings={"n_threads": 1})
    d = wait_running(api, d["id"])
    assert [(a["label"], a["weight"]) for a in d["arms"]] == [("A", 70), ("B", 30)]
    assert d["arms"][0]["port"] != d["arms"][1]["port"]
    client = bearer_client(user)
    served = []
    for _ in range(40):
        r = client.post(f"{d['endpoint']}/chat/completions", {**CHAT, "max_tokens": 1}, format="json")
        assert r.status_code == 200
        served.append(r["X-Nexus-Arm"])
    a = served.count("A")
    assert 19 <= a <= 37, served  # Binomial(40, 0.7): mean 28, three standard deviations either side
    recorded = list(DeploymentRequest.objects.filter(deployment_id=d["id"]).order_by("created_at")
                    .values_list("arm__label", flat=True))
    assert recorded == served
    stats = {arm["label"]: arm["stats"] for arm in api.get(f"{API}/deployments/{d['id']}").json()["arms"]}
    assert stats["A"]["requests"] == a and stats["B"]["requests"] == 40 - a
    stop(api, d["id"])


@worker_test
def test_a_killed_server_is_reaped_as_failed_with_its_log_tail(celery_worker_process, base_model, user, api):
    from nexus.models import JobEvent

    d = wait_running(api, deploy(api)["id"])
    arm = d["arms"][0]
    os.kill(arm["pid"], signal.SIGKILL)
    wait_for(lambda: serving.is_alive(arm["pid"], arm["port"]), lambda alive: not alive, 10, "the server to die")
    assert api.get(f"{API}/deployments/{d['id']}").json()["status"] == "running"  # a read judges nothing
    # the proxy finds no server and asks the deployment's host to check; that host's worker fails it
    r = bearer_client(user).post(f"{d['endpoint']}/chat/completions", CHAT, format="json")
    assert r.status_code == 502 and "is asked to check it" in r.json()["error"]["message"]
    detail = wait_for(lambda: api.get(f"{API}/deployments/{d['id']}").json(), lambda x: x["status"] != "running", 30,
                      "the host's check")
    assert detail["status"] == "failed"
    assert f"pid {arm['pid']} on port {arm['port']} is no longer running" in detail["error"]
    assert "Uvicorn running on" in detail["error"]  # the tail of its log
    event = JobEvent.objects.filter(job_kind="deployment", job_id=d["id"], level="error").last()
    assert event and event.data["status"] == "failed"
    r = bearer_client(user).post(f"{d['endpoint']}/chat/completions", CHAT, format="json")
    assert r.status_code == 409


@worker_test
def test_a_deployment_outlives_the_worker_that_launched_it(celery_worker_process, base_model, user, api):
    d = wait_running(api, deploy(api)["id"])
    arm = d["arms"][0]
    celery_worker_process.kill9()
    celery_worker_process.start()  # its start-up reap finds the server alive and leaves it
    assert serving.is_alive(arm["pid"], arm["port"])
    assert api.get(f"{API}/deployments/{d['id']}").json()["status"] == "running"
    r = bearer_client(user).post(f"{d['endpoint']}/chat/completions", CHAT, format="json")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    stop(api, d["id"])


@worker_test
def test_a_slow_completion_through_the_web_server_does_not_hold_up_other_requests(
        celery_worker_process, asgi_server, base_model, user, api):
    import threading

    import requests

    d = wait_running(api, deploy(api)["id"])
    key = Token.objects.get_or_create(user=user)[0].key
    headers = {"Authorization": f"Bearer {key}"}  # as an OpenAI client sends it
    done = {}

    def slow() -> None:  # a long non-streamed completion through the real ASGI server
        r = requests.post(f"{asgi_server}{d['endpoint']}/completions", headers=headers, timeout=300,
                          json={"prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "temperature": 0,
                                "logit_bias": {"0": -100, "1": -100, "2": -100}})  # no end-of-text: all 300
        done["slow"] = (time.monotonic(), r.status_code, r.json()["usage"]["completion_tokens"])

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(1.0)  # it is generating now
    r = requests.get(f"{asgi_server}{API}/deployments/{d['id']}", headers={"Authorization": f"Token {key}"},
                     timeout=300)
    other_done = time.monotonic()
    thread.join(300)
    assert r.status_code == 200 and r.json()["status"] == "running"
    finished, code, tokens = done["slow"]
    assert code == 200 and tokens == 300
    assert other_done < finished  # the other request was answered while the completion still ran
    stop(api, d["id"])


@worker_test
def test_deploying_an_adapter_without_gguf_exports_it_first_then_splits_with_base_and_compares(
        celery_worker_process, base_model, user, api):
    from adapters_app.models import LoRAAdapter
    from tests.e2e.test_export_e2e import _random_adapter

    adapter = _random_adapter(user, base_model, api)
    assert not adapter["gguf_path"]
    r = api.get(f"{API}/adapters/{adapter['id']}/compare", {"prompt": "Hi"})
    assert r.status_code == 409 and '"kind": "adapter_gguf"' in r.json()["error"]["message"]

    r = api.post(f"{API}/adapters/{adapter['id']}/deploy", {"split_with": "base", "weight": 60}, format="json")
    assert r.status_code == 201, r.content
    d = r.json()
    assert [(a["label"], a["weight"], a["adapter_id"]) for a in d["arms"]] == [("A", 60, adapter["id"]), ("B", 40, None)]
    d = wait_running(api, d["id"], timeout=420)
    gguf = LoRAAdapter.objects.get(pk=adapter["id"]).gguf_path
    assert gguf
    client = bearer_client(user)
    served = {client.post(f"{d['endpoint']}/chat/completions", {**CHAT, "max_tokens": 1}, format="json")["X-Nexus-Arm"]
              for _ in range(12)}
    assert served == {"A", "B"}

    # in use: the adapter cannot be deleted while the deployment is live
    r = api.delete(f"{API}/adapters/{adapter['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_use"
    assert "stop that deployment first" in r.json()["error"]["message"]

    from evaluation_app.engine import compare as engine

    engine._close_all()  # what other tests of this process loaded (comparison sessions run in-process there)
    r = api.get(f"{API}/adapters/{adapter['id']}/compare", {"prompt": "Name a colour.", "max_tokens": 8})
    assert r.status_code == 200, r.content
    body = r.json()
    for side in ("base", "adapter"):
        assert body[side]["completion_tokens"] > 0 and body[side]["tokens_per_s"] > 0 and body[side]["seconds"] > 0
    assert body["adapter"]["serves"].endswith(f"v{adapter['version']}")
    assert not engine._cache  # llama.cpp ran on the worker; this (web) process loaded nothing
    stop(api, d["id"])
    assert api.delete(f"{API}/adapters/{adapter['id']}").status_code == 204


# ---- no server needed -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_outsider_gets_404_from_every_deployment_endpoint(user, outsider, outsider_api, base_model):
    d = make_deployment(user, base_model)
    adapter = make_adapter(make_job(user, base_model))
    bearer = bearer_client(outsider)
    for url in (f"{API}/deployments/{d.pk}", f"{API}/deployments/{d.pk}/status", f"{API}/deployments/{d.pk}/logs",
                f"{API}/deployments/{d.pk}/v1/models", f"{API}/adapters/{adapter.pk}/compare?prompt=hi"):
        assert outsider_api.get(url).status_code == 404, url
    assert bearer.get(f"{API}/deployments/{d.pk}/v1/models").status_code == 404  # Bearer: the proxy only
    assert bearer.post(f"{API}/deployments/{d.pk}/v1/chat/completions", CHAT, format="json").status_code == 404
    for url in (f"{API}/deployments/{d.pk}/start", f"{API}/deployments/{d.pk}/stop",
                f"{API}/deployments/{d.pk}/v1/chat/completions", f"{API}/deployments/{d.pk}/v1/completions",
                f"{API}/adapters/{adapter.pk}/deploy"):
        r = outsider_api.post(url, CHAT, format="json")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", url
    assert outsider_api.delete(f"{API}/deployments/{d.pk}").status_code == 404
    assert outsider_api.get(f"{API}/deployments").json()["results"] == []
    page = Client()
    page.force_login(outsider)
    for url in (f"/finetune/deployments/{d.pk}/", f"/finetune/deployments/{d.pk}/chat/"):
        assert page.get(url).status_code == 404, url
    for url in (f"/finetune/deployments/{d.pk}/start/", f"/finetune/deployments/{d.pk}/stop/"):
        assert page.post(url).status_code == 404, url
    assert b"/finetune/deployments/%d/" % d.pk not in page.get("/finetune/deployments/").content
    d.refresh_from_db()
    assert d.status == "stopped"


@pytest.mark.django_db
def test_deleting_an_adapter_a_live_deployment_serves_is_409(user, api, base_model):
    adapter = make_adapter(make_job(user, base_model))
    d = make_deployment(user, base_model, adapter=adapter, status="running")
    r = api.delete(f"{API}/adapters/{adapter.pk}")
    assert r.status_code == 409
    assert r.json()["error"]["message"] == (f"Adapter '{adapter}' is used by deployment 'd' (#{d.pk}); "
                                            "stop that deployment first.")
    assert api.delete(f"{API}/deployments/{d.pk}").status_code == 409  # live
    d.status = "stopped"
    d.save()
    assert api.delete(f"{API}/adapters/{adapter.pk}").status_code == 204
    assert not type(d).objects.filter(pk=d.pk).exists()  # a stopped deployment of it goes with it


@pytest.mark.django_db
def test_deployment_create_checks_weights_and_the_adapters_base_model(api, base_model):
    r = api.post(f"{API}/deployments", {"base_model": base_model.name, "arms": [{"weight": 70}, {"weight": 20}]},
                 format="json")
    assert r.status_code == 400 and "add up to 100%" in r.json()["error"]["message"]
    r = api.post(f"{API}/deployments", {"base_model": base_model.name, "settings": {"n_ctx": "big"}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("settings.n_ctx")
    r = api.post(f"{API}/deployments", {"base_model": "no-such-model"}, format="json")
    assert r.status_code == 400 and "unknown model" in r.json()["error"]["message"]
    r = api.post(f"{API}/deployments", {"base_model": base_model.name, "settings": {"n_gpu_layers": -2}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("settings.n_gpu_layers")
    r = api.post(f"{API}/deployments", {"base_model": base_model.name, "settings": {"n_gpu_layers": -1}}, format="json")
    assert r.status_code == 201 and r.json()["settings"]["n_gpu_layers"] == -1


def test_gpu_offload_reaches_the_llama_cpp_server_command():
    spec = serving.ServerSpec(model_path="m.gguf", log_path="x.log", port=9, n_gpu_layers=-1)
    command = spec.command()
    assert command[command.index("--n_gpu_layers") + 1] == "-1"
    assert "--n_gpu_layers" not in serving.ServerSpec(model_path="m.gguf", log_path="x.log", port=9).command()


def test_a_reused_pid_is_not_taken_for_the_server(tmp_path):
    # this process is alive but is not a llama.cpp server on that port
    assert not serving.is_alive(os.getpid(), 8000)
    assert not serving.is_alive(None, 8000)
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)))
    assert serving.log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert "--lora_path" in serving.ServerSpec(model_path="m", log_path="l", port=1, lora_path="a").command()


@pytest.mark.django_db
def test_a_deployment_on_another_host_is_left_to_that_host(user, base_model, api, tmp_path,
                                                           django_capture_on_commit_callbacks):
    """The web process never judges or touches servers of another machine: reads leave it alone,
    a stop is sent to that host's queue (its worker stops the servers), a failed proxy call asks
    that host to check. Here the recorded pid is this test process itself, so a local check would
    wrongly find it alive or, worse, signal it."""
    import redis
    from django.conf import settings

    from deployments_app.models import Deployment
    from nexus.jobs.workers import host_queue
    from tests.factories import make_deployment

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(host_queue("gpu-box-7"))
    d = make_deployment(user, base_model, status="running")
    Deployment.objects.filter(pk=d.pk).update(host="gpu-box-7")
    log = tmp_path / "remote.log"
    log.write_text("written on gpu-box-7\n")
    d.arms.update(pid=os.getpid(), port=1, log_path=str(log), log_tail="as gpu-box-7 last read it")
    page = Client()
    page.force_login(user)
    for url in (f"{API}/deployments", f"{API}/deployments/{d.pk}", f"{API}/deployments/{d.pk}/status"):
        assert api.get(url).status_code == 200
    for url in ("/finetune/deployments/", f"/finetune/deployments/{d.pk}/"):
        assert page.get(url).status_code == 200
    assert api.get(f"{API}/deployments/{d.pk}/logs", {"arm": "A"}).json()["log"] == "as gpu-box-7 last read it"
    d.refresh_from_db()
    assert d.status == "running"
    r = bearer_client(user).post(f"{API}/deployments/{d.pk}/v1/chat/completions", CHAT, format="json")
    assert r.status_code == 502 and "(gpu-box-7) is asked to check it" in r.json()["error"]["message"]
    assert broker.llen(host_queue("gpu-box-7")) == 1  # the check, for that host's worker
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(f"{API}/deployments/{d.pk}/stop")
    assert r.status_code == 202 and r.json()["status"] == "stopping"
    assert broker.llen(host_queue("gpu-box-7")) == 2  # and the stop
    d.refresh_from_db()
    assert d.status == "stopping" and d.arms.get().pid == os.getpid()  # nothing here was signalled
