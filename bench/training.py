"""Training throughput: a plain TRL SFTTrainer against the Nexus engine, directly and through the
whole system, on the demo model; and QLoRA's peak memory against LoRA's.

In one process and on the same demo model (SmolLM2-135M-Instruct), the same data, the same LoRA
settings and the same number of optimizer steps, it runs

  (a) TRL's SFTTrainer with its defaults (no packing),
  (b) the Nexus engine (`training_app.engine.trainer.train`) called directly,
  (c) the same job through the REST API, Celery, Postgres and the job's websocket,

and prints supervised tokens per second for each and the ratios. Then it runs the engine for a
few steps with QLoRA and with LoRA, each in a fresh subprocess, and prints both peak memories.

    .venv/bin/python bench/training.py [--examples 24 --batch 4 --accum 1 --seq 1024]
    .venv/bin/python bench/training.py --quick            # tiny sizes: checks that it all runs
    .venv/bin/python bench/training.py --skip-trl --skip-system --skip-memory   # development

Targets (issue): (b)/(a) >= 1.5 and (c)/(b) within 0.95..1.05.

Rules that keep the comparison fair:

- Same data for all: N instruction/response records generated from a seed, with realistic varied
  lengths (prompts 10-150 words, responses lognormal from 10 to 600 words, English prose from
  Python's bundled documentation plus the pirate demo data), each cut so that it fits
  max_seq_length after the chat template (nothing is truncated by any trainer).
- Every run trains exactly one epoch over the same N examples with the same batch size, gradient
  accumulation and max_seq_length, so every run makes the same optimizer steps and sees every
  example once. N must be a multiple of batch * accum. All three use the Trainer's seeded sampler,
  so the steps hold the same examples; the bench checks (a) and (c) against (b).
- One count of work for all: the supervised (response, non-padding) tokens, computed once with
  our `encode_records` and printed; (b) and (c) must report the same number. TRL computes its
  loss on every token by default (its assistant-only loss needs a chat template with generation
  tags, which SmolLM2's lacks); that changes no compute, the forward and backward run over the
  same tokens either way.
- tokens/s = supervised tokens / training-loop seconds: the wall time of trainer.train() for (a)
  and (b); for (c) the job's `metrics.train_runtime_s` (the same clock inside the worker), and
  separately the rate between the first and the last metric event seen on the websocket (the
  same window is measured for (b) with timestamps taken in its hooks), and the end-to-end wall
  time from POST to the websocket's "completed".
- Same LoRA (r=16, alpha=32, dropout 0.05 on q,k,v,o), same learning rate, cosine schedule and
  warm-up steps, same precision (fp32 on a CPU; TRL's default bf16=True means bf16 autocast on a
  CPU, which is not what the engine does there, so it is turned off), same seed. Everything else
  of SFTConfig is TRL's default, including gradient checkpointing on and no packing or padding-free
  batches; the bench prints what it overrode and why. The engine runs with its own defaults
  (padding-free packing, no gradient checkpointing, a checkpoint about every tenth of the run).
- Order (a), (b), (c), each once. Model loading and tokenization are outside every timed loop,
  and every process that trains has first trained one untimed optimizer step on the same data:
  this process before (a), the Celery worker (a one-step job through the API) before (c). A fresh
  process is measurably slower for its first steps, and (b) follows (a) in a warm process.
- Other load on the machine skews wall times, so the bench also reports the trainer's CPU
  seconds and the CPU that every other process used while it trained (from /proc).
- The system run uses its own database (nexus_bench, dropped and migrated afresh), Redis database
  (12), data folder (a temp dir) and settings `nexus.settings.production`; the demo model is
  registered from the existing var/models folder, nothing is re-dequantized.
- QLoRA vs LoRA: the engine for a few steps each, in a fresh subprocess each, so the peaks do not
  mix. On a CPU the peak is the process's resident-set high-water mark (model loading included),
  on CUDA the allocator's peak.

The summary is printed and written to bench/RESULTS-training.txt (not for --quick unless
--results is given).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
# bench/ is first on the path when this runs as a script, and bench/datasets.py would hide the
# `datasets` package that TRL needs: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.benchlib import BenchSystem, free_port  # noqa: E402
from training_app.engine.data import IGNORE_INDEX, encode_conversation, encode_records, pack_rows  # noqa: E402
from training_app.engine.trainer import NullHooks  # noqa: E402

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_DIR = ROOT / "var/models" / MODEL_NAME / "hf"
PIRATE_DATA = ROOT / "datasets_app/demo_data/pirate_alpaca.jsonl"
RESULTS = ROOT / "bench/RESULTS-training.txt"
DATA_SEED = 1234
SEED = 42
# PEFT's spelling: TRL's LoraConfig takes it as is, and the engine and API accept it as aliases of rank/alpha/dropout
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
# both sides unquantized with 32-bit AdamW and no weight decay (TRL's defaults; the design's are QLoRA, adamw_8bit, 0.01)
NO_QLORA = {"enabled": False}
LEARNING_RATE = 2e-4
SCHEDULER = "cosine"
WARMUP_RATIO = 0.03
BENCH_DB = "nexus_bench"
BENCH_REDIS_DB = 12
# Batch 4: padding-free packing shares rows within a micro-batch, so batch 2 could never save a row.
FULL = {"examples": 24, "batch": 4, "accum": 1, "seq": 1024, "probe_steps": 2}
QUICK = {"examples": 12, "batch": 4, "accum": 1, "seq": 256, "probe_steps": 2}


@dataclass
class Sizes:
    examples: int
    batch: int
    accum: int
    seq: int
    probe_steps: int

    @property
    def steps(self) -> int:
        return self.examples // (self.batch * self.accum)

    @property
    def warmup_steps(self) -> int:
        return int(round(WARMUP_RATIO * self.steps))  # what the engine derives from warmup_ratio

    def training_config(self) -> dict[str, Any]:
        """The engine's and the API job's training_config: one epoch, TRL's optimizer and weight decay."""
        return {"num_epochs": 1, "batch_size": self.batch, "gradient_accumulation_steps": self.accum,
                "max_seq_length": self.seq, "learning_rate": LEARNING_RATE, "lr_scheduler": SCHEDULER,
                "warmup_ratio": WARMUP_RATIO, "seed": SEED, "optimizer": "adamw_torch", "weight_decay": 0.0}

    def warm_up_config(self) -> dict[str, Any]:
        return {**self.training_config(), "max_steps": 1}


@dataclass
class Run:
    """One timed training run."""

    label: str
    seconds: float  # training-loop wall time
    supervised: int  # supervised tokens it reports having trained on (0: it reports none)
    step_supervised: list[int] = field(default_factory=list)  # per optimizer step
    window: tuple[float, int] | None = None  # (seconds, supervised tokens) from the first to the last step's metrics
    cpu: CpuUse | None = None  # over the training loop
    window_cpu: CpuUse | None = None  # over the metric window
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cpu:
    """Linux CPU counters at one moment: the machine's busy CPU seconds and one process's CPU seconds."""

    t: float
    busy: float
    proc: float

    @classmethod
    def now(cls, pid: int | str = "self") -> Cpu | None:
        try:
            tick = os.sysconf("SC_CLK_TCK")
            jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        rest = stat[stat.rindex(")") + 2:].split()  # after the command name: field 3 (state) is rest[0]
        busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
        return cls(time.monotonic(), busy / tick, (int(rest[11]) + int(rest[12])) / tick)  # utime + stime


@dataclass
class CpuUse:
    seconds: float  # wall
    trainer: float  # CPU seconds of the training process
    other: float  # CPU seconds of everything else on the machine

    @classmethod
    def between(cls, a: Cpu | None, b: Cpu | None) -> CpuUse | None:
        if a is None or b is None or b.t <= a.t:
            return None
        return cls(b.t - a.t, b.proc - a.proc, max(0.0, (b.busy - a.busy) - (b.proc - a.proc)))


# ----------------------------------------------------------------------------- data


def corpus_words() -> list[str]:
    """English prose with some code in it: the text of Python's bundled documentation topics."""
    from pydoc_data.topics import topics

    words = []
    for key in sorted(topics):
        for word in topics[key].split():
            if len(word) <= 24 and any(c.isalnum() for c in word) and not re.search(r"[*=~^`|]{2}", word):
                words.append(word)
    return words


def generate_records(n: int, tokenizer: Any, max_seq_length: int, seed: int = DATA_SEED) -> list[dict]:
    """n user/assistant conversations with varied lengths, each fitting max_seq_length."""
    rng = random.Random(seed)
    words = corpus_words()
    pirate = [json.loads(line) for line in PIRATE_DATA.read_text().splitlines() if line.strip()]

    def span(k: int) -> list[str]:
        start = rng.randrange(len(words) - k)
        return words[start:start + k]

    records = []
    for _ in range(n):
        example = rng.choice(pirate)
        prompt_words = rng.randint(10, 150)
        response_words = int(min(600, max(10, rng.lognormvariate(math.log(110), 0.9))))
        ask = example["instruction"].split()
        prompt = " ".join(ask + span(max(0, prompt_words - len(ask))))
        opener = example["output"].split()
        response = (opener + span(max(0, response_words - len(opener))))[:response_words]
        while True:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " ".join(response)}]
            over = len(encode_conversation(tokenizer, messages, 10**9)["input_ids"]) - max_seq_length
            if over <= 0:
                break
            response = response[:max(1, len(response) - max(4, over * 2 // 3))]  # this text has ~1.5 tokens a word
        records.append({"messages": messages})
    return records


def supervised_count(example: dict) -> int:
    """Tokens the loss is on, counted as the engine counts them (labels are shifted: the first one never is)."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX)


# ----------------------------------------------------------------------------- (a) TRL


class BatchRecorder:
    """Wraps TRL's collator to see every micro-batch: its padded size, its examples' lengths and
    their supervised tokens (looked up by token ids, which also checks TRL tokenized as we did)."""

    def __init__(self, collate: Any, supervised_by_ids: dict[tuple[int, ...], int]):
        self.collate = collate
        self.supervised_by_ids = supervised_by_ids
        self.slots = 0
        self.lengths: list[list[int]] = []
        self.supervised: list[int] = []
        self.unknown = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.slots += int(batch["input_ids"].numel())
        self.lengths.append([len(f["input_ids"]) for f in features])
        counts = [self.supervised_by_ids.get(tuple(f["input_ids"])) for f in features]
        self.unknown += sum(1 for c in counts if c is None)
        self.supervised.append(sum(c or 0 for c in counts))
        return batch


def warm_up(records: list[dict], sizes: Sizes, workdir: Path) -> float:
    """One untimed optimizer step of the engine on the same data. A fresh process trains its first steps
    measurably slower (its allocator has not yet grown to the sizes training needs, e.g. about twice the
    page faults); the system's worker gets the same warm-up as a one-step job. Returns its seconds."""
    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import train

    started = time.monotonic()
    config = parse_job_config(LORA, sizes.warm_up_config(), NO_QLORA)
    train(model_dir=MODEL_DIR, records=records, config=config, output_dir=workdir / "warm-up", hooks=NullHooks())
    return time.monotonic() - started


def run_trl(records: list[dict], sizes: Sizes, supervised_by_ids: dict, workdir: Path) -> Run:
    import torch
    from datasets import Dataset, disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    overrides = {
        "output_dir": (str(workdir / "trl"), "a temp folder"),
        "per_device_train_batch_size": (sizes.batch, "same as the engine"),
        "gradient_accumulation_steps": (sizes.accum, "same as the engine"),
        "num_train_epochs": (1, "same as the engine: one epoch, every example once"),
        "max_length": (sizes.seq, "same as the engine's max_seq_length"),
        "learning_rate": (LEARNING_RATE, "same as the engine"),
        "lr_scheduler_type": (SCHEDULER, "same as the engine"),
        "warmup_steps": (sizes.warmup_steps, "same as the engine (warmup_ratio 0.03 of the steps)"),
        "seed": (SEED, "same as the engine (also TRL's default)"),
        "report_to": ("none", "no trackers (TRL's default here too)"),
        "disable_tqdm": (True, "no progress bar in the output, as the engine"),
    }
    if not torch.cuda.is_available():
        overrides["bf16"] = (False, "TRL defaults to bf16=True, which on a CPU is bf16 autocast (and fails without "
                                    "use_cpu); the engine trains in fp32 on a CPU")
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32)
    args = SFTConfig(**{k: v for k, (v, _) in overrides.items()})
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in records]),
                         peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    recorder = BatchRecorder(trainer.data_collator, supervised_by_ids)
    trainer.data_collator = recorder
    before = Cpu.now()
    started = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - started
    cpu = CpuUse.between(before, Cpu.now())
    steps = [sum(recorder.supervised[i:i + sizes.accum]) for i in range(0, len(recorder.supervised), sizes.accum)]
    kept = {"gradient_checkpointing": args.gradient_checkpointing, "packing": args.packing,
            "padding_free": args.padding_free, "assistant_only_loss": args.assistant_only_loss,
            "optim": str(getattr(args.optim, "value", args.optim)), "logging_steps": args.logging_steps,
            "save_steps": args.save_steps}
    nexus_slots = sum(len(pack_rows(lengths)) * max(lengths) for lengths in recorder.lengths)
    return Run("(a) TRL SFTTrainer", seconds, sum(recorder.supervised), steps, cpu=cpu, extra={
        "overrides": {k: (v, why) for k, (v, why) in overrides.items()}, "kept": kept,
        "optimizer_steps": int(output.global_step), "slots": recorder.slots, "nexus_slots": nexus_slots,
        "unknown_examples": recorder.unknown, "micro_batches": len(recorder.lengths),
    })


# ----------------------------------------------------------------------------- (b) the engine


class TimedHooks(NullHooks):
    """NullHooks that also note when each step's metrics arrive (the websocket window, measured in-process)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.cpu: list[Cpu | None] = []
        self.phases: dict[str, Cpu | None] = {}  # "training" begins right before trainer.train(), "exporting" right after

    def on_phase(self, phase: str) -> None:
        self.phases.setdefault(phase, Cpu.now())

    def on_step(self, metrics: dict[str, Any]) -> None:
        self.times.append(time.monotonic())
        self.cpu.append(Cpu.now())
        super().on_step(metrics)


def window(times: list[float], supervised_seen: list[int]) -> tuple[float, int] | None:
    if len(times) < 2:
        return None
    return times[-1] - times[0], supervised_seen[-1] - supervised_seen[0]


def per_step(cumulative: list[int]) -> list[int]:
    return [b - a for a, b in zip([0] + cumulative[:-1], cumulative)]


def run_engine(records: list[dict], sizes: Sizes, workdir: Path) -> Run:
    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import train

    config = parse_job_config(LORA, sizes.training_config(), NO_QLORA)
    hooks = TimedHooks()
    started = time.monotonic()
    result = train(model_dir=MODEL_DIR, records=records, config=config, output_dir=workdir / "engine", hooks=hooks)
    total = time.monotonic() - started
    if result.status != "completed":
        raise RuntimeError(f"the engine run ended {result.status}")
    seen = [m["supervised_tokens_seen"] for m in hooks.metrics]
    return Run("(b) Nexus engine", result.runtime_s, result.supervised_tokens, per_step(seen), window(hooks.times, seen),
               cpu=CpuUse.between(hooks.phases.get("training"), hooks.phases.get("exporting")),
               window_cpu=CpuUse.between(hooks.cpu[0], hooks.cpu[-1]) if hooks.cpu else None,
               extra={"optimizer_steps": result.steps, "call_seconds": total, "tokens_seen": result.tokens_seen,
                      "peak_memory_bytes": result.peak_memory_bytes,
                      "log": [m for level, m in hooks.messages if level != "debug"]})


# ----------------------------------------------------------------------------- (c) the system


class System(BenchSystem):
    """The bench's own database, Redis database and data folder, a Celery worker and the web server."""

    def __init__(self, workdir: Path):
        super().__init__(workdir, database=BENCH_DB, redis_db=BENCH_REDIS_DB)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def prepare(self) -> dict[str, str]:
        """Fresh database and Redis db, the demo model registered, a user; returns its token and session id."""
        self.fresh()
        out = self.manage("shell", "-c", (
            "import json\n"
            "from django.test import Client\n"
            "from rest_framework.authtoken.models import Token\n"
            "from nexus.teams import team_ensure_personal, user_create\n"
            "u = user_create(username='bench', password=" + repr(secrets.token_urlsafe(12)) + ")\n"
            "team_ensure_personal(user=u)\n"
            "c = Client()\n"
            "c.force_login(u)\n"
            "print('BENCH ' + json.dumps({'token': Token.objects.create(user=u).key, 'sessionid': c.cookies['sessionid'].value}))\n"
        ))
        return json.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[6:])

    def _start(self, name: str, cmd: list[str], ready) -> None:  # noqa: ANN001
        log = self.workdir / f"{name}.log"
        fh = log.open("w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc, log))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
            if ready(log):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not start in 120 s:\n{log.read_text()[-3000:]}")

    def start(self) -> None:
        self._start("worker", [sys.executable, "-m", "celery", "-A", "nexus", "worker", "-Q", "cpu,gpu", "--concurrency", "1",
                               "-n", "bench@%h", "-l", "info"], lambda log: "ready." in log.read_text())

        def listening(_log: Path) -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        self._start("web", [sys.executable, "-m", "uvicorn", "nexus.asgi:application", "--host", "127.0.0.1", "--port",
                            str(self.port), "--workers", str(os.cpu_count() or 2)], listening)

    def stop(self) -> None:
        for name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the process group we started: worker and its pool child
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()

    def trainer_pid(self) -> int | None:
        """The Celery pool process that trains (the worker's only child at concurrency 1)."""
        import psutil

        worker = next((proc for name, proc, _ in self.procs if name == "worker"), None)
        children = psutil.Process(worker.pid).children() if worker else []
        return children[0].pid if len(children) == 1 else None


class EventStream:
    """The job's websocket in a thread (autobahn, which daphne brings): notes when each event arrives."""

    TERMINAL = ("completed", "failed", "cancelled", "paused")

    def __init__(self, url: str, origin: str, sessionid: str, trainer_pid: int | None = None):
        self.url, self.origin, self.sessionid, self.trainer_pid = url, origin, sessionid, trainer_pid
        self.events: list[tuple[float, dict]] = []
        self.cpu: list[Cpu | None] = []  # at each metric event, the trainer's and the machine's CPU counters
        self.opened_at: float | None = None
        self.opened = threading.Event()
        self.finished = threading.Event()
        self.closed = threading.Event()
        self.final: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()
        if not self.opened.wait(30) or self.opened_at is None:
            raise RuntimeError(f"could not open the job's websocket {self.url}")

    def _run(self) -> None:
        import asyncio

        from autobahn.asyncio.websocket import WebSocketClientFactory, WebSocketClientProtocol

        import txaio

        stream = self
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        txaio.config.loop = loop  # autobahn schedules its handshake callbacks on txaio's loop

        class Protocol(WebSocketClientProtocol):
            def onOpen(self) -> None:  # noqa: N802 - autobahn's names
                stream.opened_at = time.monotonic()
                stream.opened.set()

            def onMessage(self, payload: bytes, is_binary: bool) -> None:  # noqa: N802
                now = time.monotonic()
                event = json.loads(payload)
                stream.events.append((now, event))
                if event.get("type") == "metric" and stream.trainer_pid:
                    stream.cpu.append(Cpu.now(stream.trainer_pid))
                if event.get("type") == "status" and (event.get("data") or {}).get("status") in stream.TERMINAL:
                    stream.final = event["data"]["status"]
                    stream.finished.set()
                    self.sendClose()

            def onClose(self, was_clean: bool, code: int, reason: str) -> None:  # noqa: N802
                stream.closed.set()
                stream.opened.set()
                loop.stop()

        factory = WebSocketClientFactory(self.url, origin=self.origin, headers={"Cookie": f"sessionid={self.sessionid}"})
        factory.protocol = Protocol
        u = urlparse(self.url)
        try:
            loop.run_until_complete(loop.create_connection(factory, u.hostname, u.port))
            loop.run_forever()
        except Exception:  # noqa: BLE001 - the waiting side reports a websocket that never opened or closed early
            self.closed.set()
            self.opened.set()
        finally:
            loop.close()


def run_system(records: list[dict], sizes: Sizes, workdir: Path, keep: bool) -> Run:
    import requests

    system = System(workdir)
    ok = False
    try:
        started = time.monotonic()
        creds = system.prepare()
        system.start()
        setup_s = time.monotonic() - started
        api = requests.Session()
        api.headers["Authorization"] = f"Token {creds['token']}"
        url = f"{system.base}/api/v1/finetune"
        upload = workdir / "bench-records.jsonl"
        upload.write_text("".join(json.dumps(r) + "\n" for r in records))
        with upload.open("rb") as fh:
            r = api.post(f"{url}/datasets", files={"file": (upload.name, fh)}, data={"name": "training bench"})
        if r.status_code != 201:
            raise RuntimeError(f"dataset upload failed: {r.status_code} {r.text[:2000]}")
        dataset = r.json()
        deadline = time.monotonic() + 600
        while dataset["status"] not in ("ready", "error") and time.monotonic() < deadline:
            time.sleep(0.5)
            dataset = api.get(f"{url}/datasets/{dataset['id']}").json()
        if dataset["status"] != "ready" or dataset["num_usable"] != len(records):
            raise RuntimeError(f"dataset not ready with {len(records)} usable examples: {json.dumps(dataset)[:2000]}")

        body = {"name": "training bench warm-up", "base_model": MODEL_NAME, "dataset_id": dataset["id"], "lora_config": LORA,
                "qlora_config": NO_QLORA, "training_config": sizes.warm_up_config()}
        warm_started = time.monotonic()
        r = api.post(f"{url}/jobs", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"warm-up job creation failed: {r.status_code} {r.text[:2000]}")
        warm = r.json()
        while warm["status"] not in ("completed", "failed", "cancelled") and time.monotonic() - warm_started < 1800:
            time.sleep(0.5)
            warm = api.get(f"{url}/jobs/{warm['id']}").json()
        if warm["status"] != "completed":
            raise RuntimeError(f"the warm-up job ended {warm['status']}: {warm.get('error')}")
        warm_s = time.monotonic() - warm_started

        body = {**body, "name": "training bench", "training_config": sizes.training_config()}
        posted = time.monotonic()
        r = api.post(f"{url}/jobs", json=body)
        if r.status_code != 201:
            raise RuntimeError(f"job creation failed: {r.status_code} {r.text[:2000]}")
        job_id = r.json()["id"]
        ws = f"ws://127.0.0.1:{system.port}/ws/finetune/training/{job_id}/?after=0"
        stream = EventStream(ws, system.base, creds["sessionid"], system.trainer_pid())
        stream.start()
        if stream.closed.is_set():
            raise RuntimeError(f"the websocket {ws} was refused or closed at once")
        job: dict = {}
        while not stream.finished.wait(10):
            job = api.get(f"{url}/jobs/{job_id}").json()
            if stream.closed.is_set() or job["status"] in ("failed", "cancelled", "paused"):
                break
            if time.monotonic() - posted > 4 * 3600:
                raise RuntimeError("the job took more than 4 hours")
        ended = time.monotonic()
        job = api.get(f"{url}/jobs/{job_id}").json()
        if stream.final != "completed" or job["status"] != "completed":
            raise RuntimeError(f"job {job_id} ended {job.get('status')} (websocket saw {stream.final}): {job.get('error')}")
        metrics = [(t, e["data"]) for t, e in stream.events
                   if e.get("type") == "metric" and "supervised_tokens_seen" in (e.get("data") or {})]
        times = [t for t, _ in metrics]
        seen = [d["supervised_tokens_seen"] for _, d in metrics]
        replayed = bool(metrics) and stream.opened_at is not None and metrics[0][0] - stream.opened_at < 0.05
        ok = True
        cpu_ok = len(stream.cpu) == len(metrics) >= 2
        return Run("(c) Nexus through the system", float(job["metrics"]["train_runtime_s"]),
                   int(job["metrics"]["supervised_tokens_seen"]), per_step(seen), window(times, seen),
                   window_cpu=CpuUse.between(stream.cpu[0], stream.cpu[-1]) if cpu_ok else None, extra={
                       "optimizer_steps": job["current_step"], "end_to_end_s": ended - posted, "setup_s": setup_s,
                       "warm_up_s": warm_s,
                       "metric_events": len(metrics), "events": len(stream.events), "first_metric_replayed": replayed,
                       "job_id": job_id, "peak_memory_bytes": job["metrics"].get("peak_memory_bytes")})
    finally:
        system.stop()
        if ok and not keep:
            system.drop()
        else:
            print(f"    (system logs and data kept in {workdir}; database {BENCH_DB})")


# ----------------------------------------------------------------------------- QLoRA vs LoRA memory


def probe_config(kind: str, sizes: Sizes) -> Any:
    from training_app.engine.config import parse_job_config

    training = {**sizes.training_config(), "gradient_accumulation_steps": 1, "max_steps": sizes.probe_steps}
    return parse_job_config(LORA, training, {"enabled": kind == "qlora"})


def memory_probe(kind: str, sizes: Sizes) -> None:
    """In a fresh process: train a few steps, print the engine's peak memory as one JSON line."""
    from transformers import AutoTokenizer

    from training_app.engine.trainer import load_model_for_training, train

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    records = generate_records(sizes.examples, tokenizer, sizes.seq)
    with tempfile.TemporaryDirectory(prefix="nexus-bench-probe-") as tmp:
        hooks = NullHooks()
        result = train(model_dir=MODEL_DIR, records=records, config=probe_config(kind, sizes), output_dir=tmp, hooks=hooks)
    notes = [m for level, m in hooks.messages if level == "warning"]
    # after the peak is taken: how much of it the model's own tensors are (4-bit weights are what QLoRA saves)
    model, _ = load_model_for_training(MODEL_DIR, probe_config(kind, sizes))
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print("PROBE " + json.dumps({"kind": kind, "peak_memory_bytes": result.peak_memory_bytes, "steps": result.steps,
                                 "runtime_s": result.runtime_s, "supervised": result.supervised_tokens, "notes": notes,
                                 "weights_bytes": weights}))


def run_memory(sizes: Sizes) -> dict[str, dict]:
    found = {}
    for kind in ("lora", "qlora"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", kind, "--examples", str(sizes.examples),
               "--batch", str(sizes.batch), "--accum", str(sizes.accum), "--seq", str(sizes.seq),
               "--probe-steps", str(sizes.probe_steps)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
        if out.returncode or not lines:
            raise RuntimeError(f"memory probe {kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        found[kind] = json.loads(lines[-1][6:])
        print(f"    {kind}: peak {mib(found[kind]['peak_memory_bytes'])} over {found[kind]['steps']} steps; "
              f"the model's tensors {mib(found[kind]['weights_bytes'])}")
    return found


# ----------------------------------------------------------------------------- report


def rate(run: Run | None, supervised: int) -> float | None:
    return supervised / run.seconds if run and run.seconds > 0 else None


def verdict(value: float | None, ok) -> str:  # noqa: ANN001
    if value is None:
        return "n/a"
    return f"{value:.3f}  {'PASS' if ok(value) else 'MISS'}"


def mib(n: int | None) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "n/a"


def summary(*, sizes: Sizes, device: str, supervised: int, real_tokens: int, runs: dict[str, Run | None],
            memory: dict | None, quick: bool) -> str:
    a, b, c = runs.get("a"), runs.get("b"), runs.get("c")
    ra, rb, rc = rate(a, supervised), rate(b, supervised), rate(c, supervised)
    lines = [
        f"Training throughput, {MODEL_NAME} on {device}, LoRA r={LORA['r']} alpha={LORA['lora_alpha']} "
        f"dropout={LORA['lora_dropout']} on {','.join(LORA['target_modules'])}",
        f"{sizes.examples} examples x 1 epoch, batch {sizes.batch} x accumulation {sizes.accum} = {sizes.steps} optimizer "
        f"steps, max_seq_length {sizes.seq}; {real_tokens:,} tokens of which {supervised:,} supervised (response) tokens"
        + ("  [--quick: sizes too small to judge the targets]" if quick else ""),
        "",
        "supervised tokens/s (supervised tokens / training-loop seconds):",
    ]
    if a:
        lines.append(f"  (a) TRL SFTTrainer, its defaults   {ra:8.1f}   ({a.seconds:.1f} s in trainer.train(); "
                     f"gradient checkpointing {'on' if a.extra['kept']['gradient_checkpointing'] else 'off'}, padded batches)")
    if b:
        lines.append(f"  (b) Nexus engine, directly         {rb:8.1f}   ({b.seconds:.1f} s in trainer.train())")
    if c:
        lines.append(f"  (c) Nexus through API/Celery/DB/ws {rc:8.1f}   ({c.seconds:.1f} s: the job's train_runtime_s)")
        if c.window and c.window[0] > 0:
            lines.append(f"      websocket, first to last metric {c.window[1] / c.window[0]:8.1f}   "
                         f"({c.window[1]:,} supervised tokens in {c.window[0]:.1f} s, steps 2..{sizes.steps})")
        lines.append(f"      end to end, POST to completed   {supervised / c.extra['end_to_end_s']:8.1f}   "
                     f"({c.extra['end_to_end_s']:.1f} s incl. model load, encoding, adapter save)")
    if b and b.window and b.window[0] > 0:
        lines.append(f"      (b) over the same metric window  {b.window[1] / b.window[0]:8.1f}   "
                     f"({b.window[1]:,} supervised tokens in {b.window[0]:.1f} s)")
    lines += ["", f"(b)/(a) = {verdict(rb / ra if ra and rb else None, lambda v: v >= 1.5)}   (target >= 1.5)",
              f"(c)/(b) = {verdict(rc / rb if rb and rc else None, lambda v: 0.95 <= v <= 1.05)}   (target 0.95..1.05)"]
    if a and b and a.cpu and b.cpu:
        lines.append(f"(b)/(a) by the trainer's CPU seconds = {a.cpu.trainer / b.cpu.trainer:.3f}   "
                     f"({a.cpu.trainer:.1f} vs {b.cpu.trainer:.1f} s; less sensitive to other load than wall time)")
    if b and c and b.window_cpu and c.window_cpu:
        lines.append(f"(c)/(b) by the trainer's CPU seconds over the metric window = "
                     f"{b.window_cpu.trainer / c.window_cpu.trainer:.3f}   ({c.window_cpu.trainer:.1f} vs "
                     f"{b.window_cpu.trainer:.1f} s)")
    if b and c and b.window and c.window and b.window[0] > 0 and c.window[0] > 0:
        lines.append(f"(c)/(b) over the metric window = {(c.window[1] / c.window[0]) / (b.window[1] / b.window[0]):.3f}")
    load = [(name, use) for name, use in (("(a)", a and a.cpu), ("(b)", b and b.cpu), ("(c) metric window", c and c.window_cpu))
            if use]
    if load:
        lines.append("other processes' CPU use while each trainer ran, in cores (background noise; for (c) it includes "
                     "the web server, Postgres, Redis, Celery's main process and this bench's websocket client): "
                     + ", ".join(f"{name} {use.other / use.seconds:.2f}" for name, use in load))
    if a:
        lines.append(f"token slots computed: TRL {a.extra['slots']:,} (padded batches) vs Nexus {a.extra['nexus_slots']:,} "
                     f"(padding-free packing of the same micro-batches); real tokens {real_tokens:,}")
    if memory:
        lora, qlora = memory["lora"]["peak_memory_bytes"], memory["qlora"]["peak_memory_bytes"]
        where = "allocated GPU memory" if device.startswith("cuda") else "process resident set, model load included"
        lines += ["", f"peak memory over {memory['lora']['steps']} engine steps ({where}):",
                  f"  LoRA  {mib(lora):>10}   (the model's tensors {mib(memory['lora']['weights_bytes'])})",
                  f"  QLoRA {mib(qlora):>10}   (the model's tensors {mib(memory['qlora']['weights_bytes'])})",
                  f"  QLoRA/LoRA = {qlora / lora:.3f}" if lora else ""]
        if not device.startswith("cuda"):
            lines.append("  (on a CPU the resident set also counts the activations and the model file's mapped pages "
                         "that loading touched, so it shows less of QLoRA's saving than GPU memory does)")
    return "\n".join(lines).rstrip() + "\n"


def check_same_work(runs: dict[str, Run | None], supervised: int, steps: int) -> list[str]:
    problems = []
    for key, run in runs.items():
        if run is None:
            continue
        if run.supervised != supervised:
            problems.append(f"{run.label} trained on {run.supervised:,} supervised tokens, expected {supervised:,}")
        if run.extra.get("optimizer_steps") != steps:
            problems.append(f"{run.label} made {run.extra.get('optimizer_steps')} optimizer steps, expected {steps}")
    a, b = runs.get("a"), runs.get("b")
    if a and a.extra["unknown_examples"]:
        problems.append(f"TRL's tokenization differs from ours for {a.extra['unknown_examples']} examples")
    if a and b and a.step_supervised != b.step_supervised:
        problems.append("(a) and (b) did not see the same examples in the same optimizer steps "
                        f"(per-step supervised tokens {a.step_supervised} vs {b.step_supervised})")
    c = runs.get("c")
    if b and c and c.step_supervised and b.step_supervised != c.step_supervised:
        problems.append(f"(b) and (c) per-step supervised tokens differ: {b.step_supervised} vs {c.step_supervised}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, help=f"number of training examples (default {FULL['examples']})")
    parser.add_argument("--batch", type=int, help=f"per-device batch size (default {FULL['batch']})")
    parser.add_argument("--accum", type=int, help=f"gradient accumulation steps (default {FULL['accum']})")
    parser.add_argument("--seq", type=int, help=f"max_seq_length (default {FULL['seq']})")
    parser.add_argument("--probe-steps", type=int, help=f"steps of each memory probe (default {FULL['probe_steps']})")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that everything runs (a few minutes)")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--skip-system", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--results", type=Path, help=f"where to write the summary (default {RESULTS.relative_to(ROOT)}; "
                                                      "--quick writes none unless given)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and the bench database")
    parser.add_argument("--memory-probe", choices=("lora", "qlora"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    base = QUICK if opts.quick else FULL
    sizes = Sizes(**{k: getattr(opts, k) if getattr(opts, k) is not None else v for k, v in base.items()})
    if sizes.examples % (sizes.batch * sizes.accum):
        parser.error(f"--examples must be a multiple of batch x accum ({sizes.batch * sizes.accum}) so that every "
                     "optimizer step trains the same number of examples in every run")

    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))  # as the Celery task does
    if opts.memory_probe:
        memory_probe(opts.memory_probe, sizes)
        return

    from transformers import AutoTokenizer

    from training_app.engine.trainer import device_summary

    bench_started = time.monotonic()
    device = device_summary()
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    records = generate_records(sizes.examples, tokenizer, sizes.seq)
    examples, skipped = encode_records(tokenizer, records, sizes.seq)
    assert not skipped and len(examples) == len(records)
    supervised_by_ids = {tuple(e["input_ids"]): supervised_count(e) for e in examples}
    supervised = sum(supervised_count(e) for e in examples)
    lengths = sorted(len(e["input_ids"]) for e in examples)
    real_tokens = sum(lengths)
    print(f"Device: {device}. Data: {len(records)} examples, {real_tokens:,} tokens (min {lengths[0]}, median "
          f"{lengths[len(lengths) // 2]}, max {lengths[-1]}), {supervised:,} supervised tokens; "
          f"{sizes.steps} optimizer steps of {sizes.batch} x {sizes.accum} examples")

    workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-training-"))
    runs: dict[str, Run | None] = {"a": None, "b": None, "c": None}
    memory = None
    failed = True
    try:
        print("Warm-up (untimed): one optimizer step of the engine on the same data...")
        print(f"    {warm_up(records, sizes, workdir):.1f} s")
        if not opts.skip_trl:
            print("(a) TRL SFTTrainer with its defaults...")
            runs["a"] = run_trl(records, sizes, supervised_by_ids, workdir)
            gc.collect()  # TRL's model and trainer hold reference cycles: free them before (b)
            print(f"    {runs['a'].seconds:.1f} s; overrode: " + "; ".join(
                f"{k}={v!r} ({why})" for k, (v, why) in runs["a"].extra["overrides"].items() if k != "output_dir"))
            print("    kept TRL defaults: " + ", ".join(f"{k}={v!r}" for k, v in runs["a"].extra["kept"].items()))
        if not opts.skip_engine:
            print("(b) Nexus engine, called directly...")
            runs["b"] = run_engine(records, sizes, workdir)
            print(f"    {runs['b'].seconds:.1f} s in trainer.train(), {runs['b'].extra['call_seconds']:.1f} s for the whole call")
            for message in runs["b"].extra["log"]:
                print(f"    | {message}")
        if not opts.skip_system:
            print("(c) Nexus through the API, Celery, Postgres and the websocket...")
            runs["c"] = run_system(records, sizes, workdir, opts.keep)
            c = runs["c"]
            print(f"    set-up {c.extra['setup_s']:.1f} s and a one-step warm-up job {c.extra['warm_up_s']:.1f} s (untimed); "
                  f"job #{c.extra['job_id']}: {c.seconds:.1f} s train_runtime_s, "
                  f"{c.extra['end_to_end_s']:.1f} s POST to completed, {c.extra['metric_events']} metric events of "
                  f"{c.extra['events']} on the websocket" + (" (the first metric came from the backlog replay: the "
                                                            "window is too short)" if c.extra["first_metric_replayed"] else ""))
        if not opts.skip_memory:
            print(f"QLoRA vs LoRA peak memory ({sizes.probe_steps} engine steps each, fresh subprocesses)...")
            memory = run_memory(sizes)
            for note in memory["qlora"]["notes"]:
                print(f"    qlora note: {note}")
        failed = False
    finally:
        if opts.keep or failed:
            print(f"(temp folder kept: {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    problems = check_same_work(runs, supervised, sizes.steps)
    text = summary(sizes=sizes, device=device, supervised=supervised, real_tokens=real_tokens, runs=runs, memory=memory,
                   quick=opts.quick)
    if problems:
        text += "\nNOT THE SAME WORK, the ratios do not compare like with like:\n" + "".join(f"  - {p}\n" for p in problems)
    if runs["a"]:
        text += ("\nTRL: overrode " + ", ".join(f"{k}={v!r}" for k, (v, _) in runs["a"].extra["overrides"].items()
                                                if k not in ("output_dir", "disable_tqdm", "report_to"))
                 + "; kept its defaults " + ", ".join(f"{k}={v!r}" for k, v in runs["a"].extra["kept"].items()) + "\n")
    text += f"\nbench wall time {time.monotonic() - bench_started:.0f} s\n"
    print("\n==================== summary ====================")
    print(text, end="")
    results = opts.results or (None if opts.quick else RESULTS)
    if results:
        results.write_text(text)
        print(f"(written to {results})")


if __name__ == "__main__":
    main()
