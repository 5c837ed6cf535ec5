"""Pause/resume and crash safety with real worker processes: a paused job and a job whose worker
was killed with SIGKILL both continue from their last checkpoint, without duplicate steps."""
from __future__ import annotations

import pytest

from tests.e2e.test_finetune_e2e import RUNNING, create_job, upload_and_wait_ready, wait_for
from tests.factories import pirate_records

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def get(api, job_id: int) -> dict:
    return api.get(f"/api/v1/finetune/jobs/{job_id}").json()


def finished(api, job_id: int, timeout: float = 300) -> dict:
    return wait_for(lambda: get(api, job_id), lambda j: j["status"] in ("completed", "failed", "cancelled"), timeout,
                    "the job to finish")


def test_pause_saves_a_checkpoint_and_resume_continues_from_it(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(8))
    job = create_job(api, dataset["id"], max_steps=10, save_steps=100, learning_rate=1e-4)
    wait_for(lambda: get(api, job["id"]), lambda j: j["current_step"] >= 3 or j["status"] not in ("queued", *RUNNING),
             180, "three steps")
    r = api.post(f"/api/v1/finetune/jobs/{job['id']}/pause")
    assert r.status_code == 202 and r.json()["pause_requested"] is True
    paused = wait_for(lambda: get(api, job["id"]), lambda j: j["status"] not in RUNNING, 60, "the pause")
    assert paused["status"] == "paused" and paused["adapter_id"] is None
    at = paused["current_step"]
    assert 3 <= at < 10
    assert api.post(f"/api/v1/finetune/jobs/{job['id']}/pause").status_code == 409
    saved = api.get(f"/api/v1/finetune/jobs/{job['id']}/checkpoints").json()["results"]
    assert [c["step"] for c in saved] == [at] and saved[0]["has_optimizer_state"]
    assert api.post(f"/api/v1/finetune/jobs/{job['id']}/resume").json()["status"] == "queued"
    done = finished(api, job["id"])
    assert done["status"] == "completed", done["error"]
    messages = [e["message"] for e in api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]]
    assert f"Resuming from checkpoint at step {at} (adapter, optimizer, scheduler and RNG state)" in messages
    steps = [m["step"] for m in api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()["results"]]
    assert steps == list(range(1, 11))
    assert done["adapter_id"] is not None
    r = api.post(f"/api/v1/finetune/jobs/{job['id']}/checkpoints/{at}/adapter")
    assert r.status_code == 201 and r.json()["name"] == f"pirate-e2e@step{at}"
    assert api.post(f"/api/v1/finetune/jobs/{job['id']}/checkpoints/9999/adapter").status_code == 404
    from adapters_app.models import LoRAAdapter
    from adapters_app.services import adapter_local_dir

    with adapter_local_dir(LoRAAdapter.objects.get(pk=r.json()["id"])) as folder:
        from peft import PeftConfig

        assert PeftConfig.from_pretrained(str(folder)).r == 8


def test_a_job_whose_worker_is_killed_resumes_from_its_last_checkpoint(celery_worker_process, base_model, api):
    dataset = upload_and_wait_ready(api, pirate_records(8))
    job = create_job(api, dataset["id"], max_steps=14, save_steps=3, learning_rate=1e-4)
    running = wait_for(lambda: get(api, job["id"]), lambda j: j["current_step"] >= 7 or j["status"] not in ("queued", *RUNNING),
                       180, "seven steps")
    assert running["status"] in RUNNING
    celery_worker_process.kill9()
    lost_at = get(api, job["id"])["current_step"]
    assert get(api, job["id"])["status"] in RUNNING  # nobody is left to say otherwise
    celery_worker_process.start()  # same name: on start it finds its orphaned job and resumes it
    done = finished(api, job["id"])
    assert done["status"] == "completed", done["error"]
    events = api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]
    resumed = [e["message"] for e in events if e["message"].startswith("Resuming from checkpoint at step")]
    assert len(resumed) == 1
    checkpoint_step = int(resumed[0].split("step ")[1].split(" ")[0])
    assert checkpoint_step % 3 == 0 and lost_at - checkpoint_step <= 3  # at most one checkpoint interval lost
    steps = [m["step"] for m in api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()["results"]]
    assert steps == list(range(1, 15))  # the curve continues without duplicate steps
    assert done["adapter_id"] is not None


def test_the_beat_resumes_a_job_whose_worker_died_with_no_worker_restarted(celery_worker_process, base_model, api):
    """A worker host dies mid-training and nobody restarts it: another worker's beat finds the
    silent worker, queues the job again from its last checkpoint, and that worker finishes it."""
    import os
    import time

    from tests.conftest import WorkerProcess

    dataset = upload_and_wait_ready(api, pirate_records(8))
    job = create_job(api, dataset["id"], max_steps=10, save_steps=2, learning_rate=1e-4)
    wait_for(lambda: get(api, job["id"]), lambda j: j["current_step"] >= 1 or j["status"] not in ("queued", *RUNNING),
             180, "the first step")
    # another worker, with beat, is up before the first dies: its start-up reap finds nothing
    rescuer = WorkerProcess(f"rescuer-{os.getpid()}@%h", beat=True)
    rescuer.start()
    wait_for(lambda: get(api, job["id"]), lambda j: j["current_step"] >= 4 or j["status"] not in RUNNING,
             180, "four steps")
    assert get(api, job["id"])["status"] in RUNNING
    celery_worker_process.kill9()
    killed_at = time.monotonic()
    try:
        events = lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]  # noqa: E731
        wait_for(events, lambda es: any("stopped; resuming from the checkpoint" in e["message"] for e in es), 120,
                 "the beat to notice the dead worker")
        noticed_after = time.monotonic() - killed_at
        done = finished(api, job["id"])
        assert done["status"] == "completed", done["error"]
        messages = [e["message"] for e in events()]
        assert any(m.startswith("Preparing on rescuer-") for m in messages)
        assert sum(m.startswith("Resuming from checkpoint at step") for m in messages) == 1
        steps = [m["step"] for m in api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()["results"]]
        assert steps == list(range(1, 11))
        # worker lost after 8 s of silence, the beat every 2 s (test settings): well inside a minute
        assert noticed_after < 60, noticed_after
    finally:
        rescuer.stop()
        celery_worker_process.start()
