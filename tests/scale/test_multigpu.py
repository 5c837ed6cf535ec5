"""Multi-GPU training (issue 15), run on this machine's CPU: 2 torchrun processes on the gloo
backend stand for 2 GPUs. The engine alone (identical weights on both ranks; the loss of 1 process
with the same global batch), control commands through the all-reduce (a pause, a stop), ranks
that never outlive their launcher, and a job through the API, the `gpu.2` queue and a real worker.

Each test kills only what it started, and checks that no rank is left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, WorkerProcess, _subprocess_env
from tests.e2e.test_finetune_e2e import RUNNING, wait_for
from tests.factories import claim_job, make_ready_dataset, personal_team, pirate_records
from training_app.engine import distributed
from training_app.engine.config import parse_job_config

pytestmark = pytest.mark.scale

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0}  # no dropout: ranks and runs are compared exactly
TINY = {"max_seq_length": 64, "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0,
        "lr_scheduler": "constant", "optimizer": "adamw_torch", "bf16": False, "save_steps": 100}
QLORA_OFF = {"enabled": False}
ENGINE = "training_app.engine.distributed"
# relative: every step holds the same examples and the loss is normalized by the tokens of the whole global
# batch, so only the order of float sums differs (2 x 1 reduced by gloo vs 1 x 2); measured here: under 1e-6
LOSS_TOLERANCE = 1e-4


def _conversations(n: int) -> list[dict]:
    """The engine's input (normalized records), from the pirate demo data."""
    return [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in pirate_records(n)]


def _config(**training):
    return parse_job_config(LORA, {**TINY, **training}, QLORA_OFF)


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie
        return ""


def _ranks_of(pid: int) -> list[psutil.Process]:
    """The torchrun agent and its ranks under `pid` (ranks are session leaders of their own)."""
    return [p for p in distributed.descendants(pid) if "distributed" in _cmdline(p)]


def _gone(procs: list[psutil.Process], timeout: float) -> bool:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


class RankWatch:
    """Remembers every torchrun process started under this test process while the block runs, and
    checks at the end that none is left (killing stragglers so a failing test leaves nothing)."""

    def __init__(self) -> None:
        self.seen: dict[int, psutil.Process] = {}
        self.lines: dict[psutil.Process, str] = {}  # command lines, read while they ran
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for p in _ranks_of(os.getpid()):
                if p.pid not in self.seen:
                    self.seen[p.pid] = p
                    self.lines[p] = _cmdline(p)

    def __enter__(self) -> "RankWatch":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=20)
        for p in alive:
            p.kill()
        if exc_type is None:
            assert not alive, f"processes left running: {[p.pid for p in alive]}"

    def ranks(self) -> list[psutil.Process]:
        return [p for p, line in self.lines.items() if "torch.distributed.run" not in line]


# --- 1. the engine alone ---------------------------------------------------------------------------------

def test_two_gloo_ranks_end_with_identical_weights_and_the_loss_of_one_process_with_the_same_global_batch(
        demo_model_files, tmp_path):
    records = _conversations(8)
    model_dir = demo_model_files[0]
    with RankWatch() as watch:
        one = distributed.run(ENGINE, 1, model_dir=model_dir, output_dir=tmp_path / "one", records=records, cwd=ROOT,
                              config=_config(batch_size=2, max_steps=4), state_dict=str(tmp_path / "one-{rank}.pt"))
        two = distributed.run(ENGINE, 2, model_dir=model_dir, output_dir=tmp_path / "two", records=records, cwd=ROOT,
                              config=_config(batch_size=1, num_gpus=2, max_steps=4),
                              state_dict=str(tmp_path / "two-{rank}.pt"))
    assert len(watch.ranks()) == 3  # one rank, then two
    assert one["status"] == two["status"] == "completed" and one["world_size"] == 1 and two["world_size"] == 2
    import torch

    rank0, rank1 = torch.load(tmp_path / "two-0.pt"), torch.load(tmp_path / "two-1.pt")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the two ranks' LoRA weights differ"
    alone = torch.load(tmp_path / "one-0.pt")
    drift = max(float((alone[k] - rank0[k]).abs().max()) for k in alone)
    assert drift < 1e-3, drift  # the same updates, up to float summation order

    curve_one = [(m["step"], m["loss"]) for m in one["metrics"]]
    curve_two = [(m["step"], m["loss"]) for m in two["metrics"]]
    assert [s for s, _ in curve_one] == [s for s, _ in curve_two] == [1, 2, 3, 4]
    for (step, a), (_, b) in zip(curve_one, curve_two):
        assert abs(a - b) <= LOSS_TOLERANCE * abs(a), (step, a, b)
    # both saw the same 8 examples' tokens: counted over both ranks
    assert one["tokens_seen"] == two["tokens_seen"] > 0
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_the_ranks_exit_when_the_process_that_launched_them_is_killed(demo_model_files, tmp_path):
    """SIGKILL leaves the launcher no time to stop anyone: each rank sees it gone and leaves."""
    spec = {"model_dir": str(demo_model_files[0]), "output_dir": str(tmp_path / "out"), "records": _conversations(8),
            "config": _config(batch_size=1, num_gpus=2, max_steps=500, save_steps=1).as_dicts()}
    (tmp_path / "args.json").write_text(json.dumps(spec))
    launcher = subprocess.Popen(
        [sys.executable, "-c", (
            "import json, sys; from training_app.engine import distributed; from training_app.engine.config import parse_job_config\n"
            "a = json.load(open(sys.argv[1])); c = a['config']\n"
            "distributed.run('training_app.engine.distributed', 2, model_dir=a['model_dir'], output_dir=a['output_dir'],"
            " records=a['records'], cwd='.', config=parse_job_config(c['lora_config'], c['training_config'], c['qlora_config']))"),
         str(tmp_path / "args.json")], cwd=ROOT, start_new_session=True)
    procs: list[psutil.Process] = []
    try:
        from training_app.engine.checkpoints import checkpoints

        wait_for(lambda: checkpoints(tmp_path / "out"), lambda found: len(found) >= 1 or launcher.poll() is not None,
                 180, "the first checkpoint")
        procs = _ranks_of(launcher.pid)
        assert launcher.poll() is None and len(procs) == 3, procs  # the agent and two ranks, training
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        assert _gone(procs, timeout=20), [p.pid for p in procs if p.is_running()]
        steps = len(checkpoints(tmp_path / "out"))
        time.sleep(2)
        assert len(checkpoints(tmp_path / "out")) == steps  # nothing trains on
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        for p in procs:
            if p.is_running():
                p.kill()


# --- 2. control commands reach every rank (the platform's ranks, without Celery) --------------------------

@pytest.fixture
def ranks_env(monkeypatch):
    """The ranks are Django processes of their own: they must use the test database and broker."""
    for key, value in _subprocess_env().items():
        monkeypatch.setenv(key, value)


def _job(user, base_model, **training):
    from training_app.services import training_job_create

    dataset = make_ready_dataset(user, pirate_records(8))
    job = training_job_create(team=personal_team(user), user=user, name="ddp", base_model=base_model.name,
                              dataset_id=dataset.pk, lora_config=LORA, qlora_config=QLORA_OFF,
                              training_config={**TINY, "batch_size": 1, "num_gpus": 2, **training})
    return job


def _run_claimed(job_id: int, *, when_step: int, then) -> None:
    """Claim and run the job here (as the worker's task would), doing `then(job)` once it reaches a step."""
    from django.db import connection

    from training_app.models import FineTuningJob
    from training_app.runner import training_job_run

    def act() -> None:
        try:
            job = wait_for(lambda: FineTuningJob.objects.get(pk=job_id),
                           lambda j: j.current_step >= when_step or j.status not in RUNNING, 240, f"step {when_step}")
            then(job)
        finally:
            connection.close()

    assert claim_job(job_id, worker="ddp-test@host")
    helper = threading.Thread(target=act)
    helper.start()
    try:
        training_job_run(job_id=job_id)
    finally:
        helper.join()


def _two_ranks_joined(job_id: int) -> bool:
    """Rank 0 ran in a world of two and finished a step: every step all-reduces the gradients and the
    control flags across both ranks, so a finished step means both took part. (The process watcher
    polls and may miss a rank on a loaded machine; this cannot.)"""
    from nexus.models import JobEvent

    events = JobEvent.objects.filter(job_kind="training", job_id=job_id)
    return (events.filter(message__startswith="Data parallel on 2 processes (gloo)").exists()
            and events.filter(type="metric", data__step__gte=1).exists())


def _metric_steps(job_id: int) -> list[int]:
    from nexus.models import JobEvent

    return [e.data["step"] for e in JobEvent.objects.filter(job_kind="training", job_id=job_id, type="metric")
            .order_by("seq") if "loss" in e.data]


@pytest.mark.django_db(transaction=True)
def test_a_pause_reaches_both_ranks_and_the_job_resumes_from_their_checkpoint(base_model, user, ranks_env):
    from training_app.engine.checkpoints import checkpoint_step, latest_checkpoint
    from training_app.models import FineTuningJob
    from training_app.services import training_job_pause, training_job_resume

    job = _job(user, base_model, max_steps=6)
    with RankWatch() as watch:  # on leaving: no rank is left running
        _run_claimed(job.pk, when_step=2, then=lambda j: training_job_pause(job=j))
    assert watch.ranks() and _two_ranks_joined(job.pk)
    job.refresh_from_db()
    assert job.status == "paused", job.error
    checkpoint = latest_checkpoint(job.output_dir)
    at = checkpoint_step(checkpoint)
    assert 2 <= at < 6 and job.current_step == at
    # both ranks stopped at that step and saved their part of it
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()

    training_job_resume(job=FineTuningJob.objects.get(pk=job.pk))
    with RankWatch():
        _run_claimed(job.pk, when_step=99, then=lambda j: None)
    job.refresh_from_db()
    assert job.status == "completed", job.error
    assert _metric_steps(job.pk) == [1, 2, 3, 4, 5, 6]
    from nexus.models import JobEvent

    messages = list(JobEvent.objects.filter(job_kind="training", job_id=job.pk).values_list("message", flat=True))
    assert f"Resuming from checkpoint at step {at} (adapter, optimizer, scheduler and RNG state)" in messages
    assert any(m.startswith("Data parallel on 2 processes (gloo): global batch 2") for m in messages)
    assert job.adapter is not None


@pytest.mark.django_db(transaction=True)
def test_a_stop_ends_both_ranks(base_model, user, ranks_env):
    from training_app.services import training_job_cancel

    job = _job(user, base_model, max_steps=200)
    started = time.monotonic()
    with RankWatch() as watch:  # on leaving: no rank is left running
        _run_claimed(job.pk, when_step=1, then=lambda j: training_job_cancel(job=j))
    assert watch.ranks()
    job.refresh_from_db()
    assert job.status == "cancelled", job.error
    assert _two_ranks_joined(job.pk)
    assert 1 <= job.current_step < 200 and job.adapter is None
    assert time.monotonic() - started < 180  # no rank was left waiting in the all-reduce


# --- 3. through the platform: the API, the gpu.2 queue, a real worker -------------------------------------

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("num_gpus", [0, 17])
def test_num_gpus_out_of_range_is_a_400_naming_the_field(base_model, user, api, num_gpus):
    dataset = make_ready_dataset(user, pirate_records(4))
    r = api.post("/api/v1/finetune/jobs", {"name": "x", "base_model": base_model.name, "dataset_id": dataset.pk,
                                           "training_config": {"num_gpus": num_gpus}}, format="json")
    assert r.status_code == 400, r.content
    assert "training_config.num_gpus" in r.json()["error"]["details"], r.json()


def _queued(broker, queue: str) -> list[tuple]:
    """(task name, args) of the messages waiting in a Celery queue on the Redis broker."""
    import ast

    return [(m["headers"]["task"], ast.literal_eval(m["headers"]["argsrepr"]))
            for m in (json.loads(raw) for raw in broker.lrange(queue, 0, -1))]


@pytest.mark.django_db(transaction=True)
def test_a_two_gpu_job_goes_to_queue_gpu_2_and_a_worker_of_that_queue_trains_it(base_model, user, api):
    import redis
    from django.conf import settings

    from nexus.jobs import resend_waiting
    from training_app.jobs import TRAINING

    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete("gpu.2")
    dataset = make_ready_dataset(user, pirate_records(8))
    r = api.post("/api/v1/finetune/jobs", {
        "name": "two-gpus", "base_model": base_model.name, "dataset_id": dataset.pk, "lora_config": LORA,
        "qlora_config": QLORA_OFF, "training_config": {**TINY, "batch_size": 1, "num_gpus": 2, "max_steps": 4}},
        format="json")
    assert r.status_code == 201, r.content
    job = r.json()
    assert job["training_config"]["num_gpus"] == 2
    assert _queued(broker, "gpu.2") == [("nexus.jobs.run", ("training", job["id"]))]
    assert ("nexus.jobs.run", ("training", job["id"])) not in _queued(broker, "gpu")
    # the reaper sends a waiting job the broker lost to the same queue
    broker.delete(f"nexus:sent:training:{job['id']}")
    assert resend_waiting(TRAINING) == [job["id"]]
    assert _queued(broker, "gpu.2") == [("nexus.jobs.run", ("training", job["id"]))] * 2  # the second finds it taken

    worker = WorkerProcess(f"ddp-{os.getpid()}@%h", queues="gpu.2")
    with RankWatch():
        worker.start()
        try:
            done = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}").json(),
                            lambda j: j["status"] not in ("queued", *RUNNING), 300, "the job to finish")
        finally:
            worker.stop()
    assert done["status"] == "completed", done["error"]
    assert done["adapter_id"] is not None and done["total_steps"] == 4
    steps = [m["step"] for m in api.get(f"/api/v1/finetune/jobs/{job['id']}/metrics").json()["results"]]
    assert steps == [1, 2, 3, 4]
    messages = [e["message"] for e in api.get(f"/api/v1/finetune/jobs/{job['id']}/events").json()["results"]]
    assert any(m.startswith(f"Preparing on ddp-{os.getpid()}@") for m in messages)
    assert any(m.startswith("Data parallel on 2 processes (gloo)") for m in messages)
    assert broker.llen("gpu.2") == 0
