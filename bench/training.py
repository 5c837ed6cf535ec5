"""Training throughput: TRL's SFTTrainer (its defaults, and tuned as a user who picks it for speed
would) against the Nexus engine, directly and through the whole system, and against a bare packed
training loop, on the demo model; and the peak memory of each trainer, and of QLoRA against LoRA.

In one process and on the same demo model (SmolLM2-135M-Instruct), the same data, the same LoRA
settings and the same number of optimizer steps, it runs

  (a)  TRL's SFTTrainer with its defaults (gradient checkpointing on, padded batches),
  (a2) TRL's SFTTrainer tuned: padding_free=True (each micro-batch flattened into one row with
       position ids restarting per example), gradient_checkpointing=False, max_length=None (TRL
       refuses padding-free without packing when it is set; every example already fits), and the
       loss on the response tokens only,
  (b)  the Nexus engine (`training_app.engine.trainer.train`) called directly,
  (d)  the compute limit: the engine's model and LoRA (its own loader, so its lean modules and
       per-example attention) in a plain loop, no Trainer and no callbacks: each micro-batch
       packed into one row (examples concatenated, position ids restarting per example, no
       padding), the LM head and the loss only at the positions whose next token is supervised
       (transformers' `logits_to_keep`), backward, gradient clipping, AdamW and the same schedule,
  (c)  the same job as (b) through the REST API, Celery, Postgres and the job's websocket,

and prints supervised tokens per second for each, the ratios, and the token slots each computed
(the tokens fed through the model, padding included). Then, each in a fresh subprocess so that the
peaks do not mix, it trains (a2), (b), (d) and the engine with QLoRA for a few steps at the same
batch and prints the peak memories.

    .venv/bin/python bench/training.py [--examples 24 --batch 4 --accum 1 --seq 1024]
    .venv/bin/python bench/training.py --quick            # tiny sizes: checks that it all runs
    .venv/bin/python bench/training.py --skip-trl --skip-loop --skip-system --skip-memory   # development

Targets (issue): (b)/(a) >= 1.5, (b)/(a2) >= 1.1 and (b)/(d) >= 0.9 in supervised tokens/s, peak
memory (b)/(a2) <= 0.7 at the same batch, and (c)/(b) within 0.95..1.05.

Rules that keep the comparison fair:

- Same data for all: N instruction/response records generated from a seed, with realistic varied
  lengths (prompts 10-150 words, responses lognormal from 10 to 600 words, English prose from
  Python's bundled documentation plus the pirate demo data), each cut so that it fits
  max_seq_length after the chat template (nothing is truncated by any trainer).
- Every run trains exactly one epoch over the same N examples with the same batch size, gradient
  accumulation and max_seq_length, so every run makes the same optimizer steps and sees every
  example once. N must be a multiple of batch * accum. All use the Trainer's seeded sampler ((d)
  takes its micro-batches from a transformers Trainer's dataloader with the engine's arguments,
  untimed), so the steps hold the same examples; the bench checks every run's per-step
  supervised tokens against (b)'s.
- One count of work for all: the supervised (response, non-padding) tokens, computed once with
  our `encode_records` and printed; every run must have trained on exactly these. (a) computes its
  loss on every token (TRL's default); that changes no compute, the forward and backward run over
  the same tokens either way. (a2) puts it on the response only as TRL allows for this model:
  prompt/completion records (the user turn as the prompt, the assistant turn as the completion)
  with completion_only_loss=True. assistant_only_loss=True is not workable here: TRL 1.16 swaps in
  a training chat template only for the templates it knows and rejects SmolLM2's ("patching is
  not supported for this template"). The bench checks that TRL's labels put the loss on the same
  tokens as the engine's, and that TRL tokenized every example as we did.
- Token slots: the tokens each run feeds through the model, padding included, counted on the
  micro-batches as they leave each collator ((b)'s by wrapping the collator the engine picks).
  Padding-free packing in (a2), (b) and (d) feeds only real tokens: each micro-batch is one row.
- Attention in one packed row: (a2) gets transformers' SDPA with the block-diagonal mask it builds
  from the position ids, and on a CPU SDPA's flash kernel computes the whole T x T score matrix of
  the row (the mask hides other examples' scores but does not skip them). The engine, and (d)
  with the engine's model, attend per example (training_app/engine/lean.py: one causal SDPA call
  per example from the row's `cu_seq_lens_q`), as flash-attention's varlen kernel does on CUDA.
- tokens/s = supervised tokens / training-loop seconds: the wall time of trainer.train() for (a),
  (a2) and (b), of the loop alone for (d); for (c) the job's `metrics.train_runtime_s` (the same
  clock inside the worker), and separately the rate between the first and the last metric event
  seen on the websocket (the same window is measured for (b) with timestamps taken in its hooks),
  and the end-to-end wall time from POST to the websocket's "completed".
- Same LoRA (r=16, alpha=32, dropout 0.05 on q,k,v,o), same learning rate, cosine schedule and
  warm-up steps, gradient clipping at 1.0, AdamW without weight decay, same precision (fp32 on a
  CPU; TRL's default bf16=True means bf16 autocast on a CPU, which is not what the engine does
  there, so it is turned off), same seed. Everything else of SFTConfig is TRL's default (for (a)
  gradient checkpointing on and padded batches); the bench prints what it overrode and why. The
  engine runs with its own defaults (padding-free packing, no gradient checkpointing, a
  checkpoint about every tenth of the run).
- Order (a), (a2), (b), (d), (c), each once. Model loading and tokenization are outside every
  timed loop, and every process that trains has first trained one untimed optimizer step on the
  same data: this process before (a), (d) once more on its own model (then its adapter weights
  are put back), the Celery worker (a one-step job through the API) before (c). A fresh process is
  measurably slower for its first steps.
- Other load on the machine skews wall times, so the bench also reports the trainer's CPU
  seconds and the CPU that every other process used while it trained (from /proc).
- The system run uses its own database (nexus_bench, dropped and migrated afresh), Redis database
  (12), data folder (a temp dir) and settings `nexus.settings.production`; the demo model is
  registered from the existing var/models folder, nothing is re-dequantized.
- Peak memory: (a2), (b) (the engine with LoRA), (d) and the engine with QLoRA train the first few
  micro-batches of the same order at the same batch, without accumulation, each in a fresh
  subprocess, so the peaks do not mix; the meter is reset right before the model loads. On a CPU
  the peak is the process's resident-set high-water mark (VmHWM, model loading included), on CUDA
  the allocator's peak (torch.cuda.max_memory_allocated).

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
# bench/ is first on the path when this runs as a script, and bench/datasets.py would hide the
# `datasets` package that TRL needs: put the repository root there instead.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.benchlib import BenchSystem, free_port  # noqa: E402
from training_app.engine.data import IGNORE_INDEX, cu_seq_lens, encode_conversation, encode_records  # noqa: E402
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


# ----------------------------------------------------------------------------- (a) and (a2) TRL


class BatchRecorder:
    """Wraps a trainer's collator to see every micro-batch: the token slots it feeds the model (padding
    included), its examples' lengths, their supervised tokens (looked up by token ids, which also checks
    that the trainer tokenized as we did) and the tokens its own labels put the loss on."""

    def __init__(self, collate: Any, supervised_by_ids: dict[tuple[int, ...], int]):
        self.collate = collate
        self.supervised_by_ids = supervised_by_ids
        self.slots = 0
        self.lengths: list[list[int]] = []
        self.supervised: list[int] = []
        self.loss_tokens = 0  # labels[1:] that are not IGNORE_INDEX, as the trainer built them
        self.unknown = 0

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collate(features)
        self.slots += int(batch["input_ids"].numel())
        self.lengths.append([len(f["input_ids"]) for f in features])
        counts = [self.supervised_by_ids.get(tuple(f["input_ids"])) for f in features]
        self.unknown += sum(1 for c in counts if c is None)
        self.supervised.append(sum(c or 0 for c in counts))
        self.loss_tokens += sum(sum(1 for t in f.get("labels", f["input_ids"])[1:] if t != IGNORE_INDEX) for f in features)
        return batch

    def per_step(self, accum: int) -> list[int]:
        return [sum(self.supervised[i:i + accum]) for i in range(0, len(self.supervised), accum)]


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


def trl_overrides(sizes: Sizes, workdir: Path, *, tuned: bool, max_steps: int | None = None) -> dict[str, tuple[Any, str]]:
    """SFTConfig's settings that differ from TRL's defaults, each with the reason: (a) only what keeps the
    work the same as the engine's; (a2) also what a user who picks TRL for speed would turn on."""
    import torch

    overrides = {
        "output_dir": (str(workdir / ("trl-tuned" if tuned else "trl")), "a temp folder"),
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
    if tuned:
        overrides.update({
            "padding_free": (True, "each micro-batch flattened into one row with position ids restarting per example"),
            "gradient_checkpointing": (False, "memory allows it at this size, and recomputing activations costs time"),
            "max_length": (None, "TRL refuses padding_free without packing when max_length is set; every example "
                                 "already fits max_seq_length, so nothing changes"),
            "completion_only_loss": (True, "loss on the response tokens only, with prompt/completion records "
                                           "(assistant_only_loss rejects SmolLM2's chat template)"),
        })
    if max_steps is not None:
        overrides["max_steps"] = (max_steps, "a memory probe: only a few steps")
    return overrides


def trl_dataset(records: list[dict], *, tuned: bool) -> Any:
    """(a) the conversations as they are; (a2) the same split into prompt and completion, which is how TRL
    puts the loss on the response only for a template without generation tags."""
    from datasets import Dataset

    if not tuned:
        return Dataset.from_list([{"messages": r["messages"]} for r in records])
    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in records])


def run_trl(records: list[dict], sizes: Sizes, supervised_by_ids: dict, workdir: Path, *, tuned: bool,
            max_steps: int | None = None) -> Run:
    import torch
    from datasets import disable_progress_bars
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    overrides = trl_overrides(sizes, workdir, tuned=tuned, max_steps=max_steps)
    set_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32)
    args = SFTConfig(**{k: v for k, (v, _) in overrides.items()})
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=trl_dataset(records, tuned=tuned),
                         peft_config=LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA))
    recorder = BatchRecorder(trainer.data_collator, supervised_by_ids)
    trainer.data_collator = recorder
    before = Cpu.now()
    started = time.monotonic()
    output = trainer.train()
    seconds = time.monotonic() - started
    cpu = CpuUse.between(before, Cpu.now())
    kept = {name: args_value(args, name) for name in ("gradient_checkpointing", "packing", "padding_free",
                                                       "completion_only_loss", "assistant_only_loss", "optim",
                                                       "logging_steps", "save_steps") if name not in overrides}
    label = "(a2) TRL SFTTrainer, tuned" if tuned else "(a) TRL SFTTrainer"
    return Run(label, seconds, sum(recorder.supervised), recorder.per_step(sizes.accum), cpu=cpu, extra={
        "overrides": overrides, "kept": kept, "optimizer_steps": int(output.global_step), "slots": recorder.slots,
        "loss_tokens": recorder.loss_tokens, "unknown_examples": recorder.unknown, "micro_batches": len(recorder.lengths),
        "gradient_checkpointing": bool(args.gradient_checkpointing), "padding_free": bool(args.padding_free),
    })


def args_value(args: Any, name: str) -> Any:
    value = getattr(args, name)
    return str(getattr(value, "value", value)) if name == "optim" else value


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


@contextmanager
def engine_batches(supervised_by_ids: dict[tuple[int, ...], int]) -> Iterator[list[BatchRecorder]]:
    """Records the engine's micro-batches as they reach the model, whatever collator the engine picks:
    train() looks up `make_collator` in training_app.engine.data when it runs, so wrapping that name sees it."""
    from training_app.engine import data

    made: list[BatchRecorder] = []
    original = data.make_collator

    def make(*args: Any, **kwargs: Any) -> BatchRecorder:
        made.append(BatchRecorder(original(*args, **kwargs), supervised_by_ids))
        return made[-1]

    data.make_collator = make
    try:
        yield made
    finally:
        data.make_collator = original


def run_engine(records: list[dict], sizes: Sizes, supervised_by_ids: dict, workdir: Path) -> Run:
    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import train

    config = parse_job_config(LORA, sizes.training_config(), NO_QLORA)
    hooks = TimedHooks()
    started = time.monotonic()
    with engine_batches(supervised_by_ids) as made:
        result = train(model_dir=MODEL_DIR, records=records, config=config, output_dir=workdir / "engine", hooks=hooks)
    total = time.monotonic() - started
    if result.status != "completed":
        raise RuntimeError(f"the engine run ended {result.status}")
    seen = [m["supervised_tokens_seen"] for m in hooks.metrics]
    return Run("(b) Nexus engine", result.runtime_s, result.supervised_tokens, per_step(seen), window(hooks.times, seen),
               cpu=CpuUse.between(hooks.phases.get("training"), hooks.phases.get("exporting")),
               window_cpu=CpuUse.between(hooks.cpu[0], hooks.cpu[-1]) if hooks.cpu else None,
               extra={"optimizer_steps": result.steps, "call_seconds": total, "tokens_seen": result.tokens_seen,
                      "peak_memory_bytes": result.peak_memory_bytes, "slots": made[0].slots if made else None,
                      "log": [m for level, m in hooks.messages if level != "debug"]})


# ----------------------------------------------------------------------------- (d) the compute limit


def seeded_micro_batches(model: Any, examples: list[dict], sizes: Sizes, workdir: Path) -> list[list[dict]]:
    """The micro-batches in the order the engine's Trainer draws them (its seeded sampler, the same
    arguments), from a transformers Trainer's own dataloader; nothing is trained. check_same_work
    compares the per-step supervised tokens with (b)'s."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(workdir / "loop"), per_device_train_batch_size=sizes.batch, seed=SEED,
                             data_seed=SEED, use_cpu=not torch.cuda.is_available(), report_to="none",
                             remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=list)
    return [list(batch) for batch in trainer.get_train_dataloader()]


def packed_row(batch: list[dict], device: Any) -> dict[str, Any]:
    """One micro-batch as one row: its examples concatenated with position ids from 0 for each (transformers
    then keeps attention within each example), no padding; `keep` are the positions whose next token is
    supervised and `targets` those tokens, so the LM head and the loss run there only."""
    import torch

    ids: list[int] = []
    positions: list[int] = []
    keep: list[int] = []
    targets: list[int] = []
    for example in batch:
        offset = len(ids)
        ids += example["input_ids"]
        positions += range(len(example["input_ids"]))
        for i, label in enumerate(example["labels"][1:]):
            if label != IGNORE_INDEX:
                keep.append(offset + i)
                targets.append(label)
    bounds = cu_seq_lens([len(example["input_ids"]) for example in batch])
    return {"input_ids": torch.tensor([ids], device=device), "position_ids": torch.tensor([positions], device=device),
            "cu_seq_lens_q": bounds, "keep": torch.tensor(keep, device=device),
            "targets": torch.tensor(targets, device=device)}


def run_loop(examples: list[dict], sizes: Sizes, workdir: Path, *, steps: int | None = None, warm: bool = True) -> Run:
    """(d): the engine's model and LoRA in a plain loop (forward, loss, backward, clip, AdamW, schedule)."""
    import torch
    import torch.nn.functional as F  # noqa: N812
    from transformers import get_scheduler, set_seed

    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import load_model_for_training, precision_for

    config = parse_job_config(LORA, sizes.training_config(), NO_QLORA)
    set_seed(SEED)
    model, _ = load_model_for_training(MODEL_DIR, config)
    device = next(model.parameters()).device
    steps = steps or sizes.steps
    rows = [packed_row(batch, device) for batch in seeded_micro_batches(model, examples, sizes, workdir)]
    rows = rows[:steps * sizes.accum]
    params = [p for p in model.parameters() if p.requires_grad]
    precision = precision_for(config)[0]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if device.type == "cuda" and precision != "fp32" else nullcontext())
    model.train()

    def train_steps(rows: list[dict], optimizer: Any, scheduler: Any) -> list[int]:
        supervised = []
        for start in range(0, len(rows), sizes.accum):
            group = rows[start:start + sizes.accum]
            n = sum(len(row["targets"]) for row in group)  # the loss is a mean over the step's supervised tokens
            for row in group:
                with autocast:
                    logits = model(input_ids=row["input_ids"], position_ids=row["position_ids"],
                                   cu_seq_lens_q=row["cu_seq_lens_q"], logits_to_keep=row["keep"], use_cache=False).logits
                loss = F.cross_entropy(logits[0].float(), row["targets"], reduction="sum") / n
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.training.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            supervised.append(n)
        return supervised

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if warm:  # one untimed optimizer step, then the adapter's weights as they were
        initial = [p.detach().clone() for p in params]
        optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
        train_steps(rows[:sizes.accum], optimizer, get_scheduler("constant", optimizer))
        with torch.no_grad():
            for p, value in zip(params, initial):
                p.copy_(value)
        del initial, optimizer
    set_seed(SEED)
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=config.training.weight_decay)
    scheduler = get_scheduler(SCHEDULER, optimizer, num_warmup_steps=sizes.warmup_steps, num_training_steps=steps)
    sync()
    before = Cpu.now()
    started = time.monotonic()
    step_supervised = train_steps(rows, optimizer, scheduler)
    sync()
    seconds = time.monotonic() - started
    return Run("(d) packed loop", seconds, sum(step_supervised), step_supervised, cpu=CpuUse.between(before, Cpu.now()),
               extra={"optimizer_steps": len(step_supervised), "slots": sum(int(r["input_ids"].numel()) for r in rows)})


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


# ----------------------------------------------------------------------------- peak memory


PROBES = {"trl": "(a2) TRL tuned", "lora": "(b) Nexus engine, LoRA", "loop": "(d) packed loop", "qlora": "Nexus engine, QLoRA"}


def probe_config(kind: str, sizes: Sizes) -> Any:
    from training_app.engine.config import parse_job_config

    training = {**sizes.training_config(), "gradient_accumulation_steps": 1, "max_steps": sizes.probe_steps}
    return parse_job_config(LORA, training, {"enabled": kind == "qlora"})


def memory_probe(kind: str, sizes: Sizes) -> None:
    """In a fresh process: train a few steps at the same batch (no accumulation), print the peak memory
    as one JSON line. The meter is reset right before the model loads, in every kind alike."""
    from transformers import AutoTokenizer

    from training_app.engine.trainer import MemoryMeter, load_model_for_training, train

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    records = generate_records(sizes.examples, tokenizer, sizes.seq)
    examples, _ = encode_records(tokenizer, records, sizes.seq)
    probe_sizes = replace(sizes, accum=1)
    meter = MemoryMeter()
    found: dict[str, Any] = {"kind": kind, "notes": []}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-probe-") as tmp:
        meter.reset()
        if kind == "trl":
            supervised_by_ids = {tuple(e["input_ids"]): supervised_count(e) for e in examples}
            run = run_trl(records, probe_sizes, supervised_by_ids, Path(tmp), tuned=True, max_steps=sizes.probe_steps)
        elif kind == "loop":
            run = run_loop(examples, probe_sizes, Path(tmp), steps=sizes.probe_steps, warm=False)
        else:
            hooks = NullHooks()
            result = train(model_dir=MODEL_DIR, records=records, config=probe_config(kind, sizes), output_dir=tmp,
                           hooks=hooks)
            run = Run(kind, result.runtime_s, result.supervised_tokens, extra={"optimizer_steps": result.steps})
            found["notes"] = [m for level, m in hooks.messages if level == "warning"]
        found.update(peak_memory_bytes=meter.peak(), steps=run.extra["optimizer_steps"], runtime_s=run.seconds,
                     supervised=run.supervised)
    if kind in ("lora", "qlora"):
        # after the peak is taken: how much of it the model's own tensors are (4-bit weights are what QLoRA saves)
        model, _ = load_model_for_training(MODEL_DIR, probe_config(kind, sizes))
        found["weights_bytes"] = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    print("PROBE " + json.dumps(found))


def run_memory(sizes: Sizes, kinds: list[str]) -> dict[str, dict]:
    found = {}
    for kind in kinds:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", kind, "--examples", str(sizes.examples),
               "--batch", str(sizes.batch), "--accum", str(sizes.accum), "--seq", str(sizes.seq),
               "--probe-steps", str(sizes.probe_steps)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
        if out.returncode or not lines:
            raise RuntimeError(f"memory probe {kind} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        found[kind] = json.loads(lines[-1][6:])
        weights = found[kind].get("weights_bytes")
        print(f"    {PROBES[kind]}: peak {mib(found[kind]['peak_memory_bytes'])} over {found[kind]['steps']} steps"
              + (f"; the model's tensors {mib(weights)}" if weights else ""))
    return found


# ----------------------------------------------------------------------------- report


TARGETS = {  # name: (what, test, target as printed)
    "b/a": ("(b)/(a) supervised tokens/s", lambda v: v >= 1.5, ">= 1.5"),
    "b/a2": ("(b)/(a2) supervised tokens/s", lambda v: v >= 1.1, ">= 1.1"),
    "b/d": ("(b)/(d) supervised tokens/s", lambda v: v >= 0.9, ">= 0.9"),
    "c/b": ("(c)/(b) supervised tokens/s", lambda v: 0.95 <= v <= 1.05, "0.95..1.05"),
    "mem b/a2": ("peak memory (b)/(a2), same batch", lambda v: v <= 0.7, "<= 0.7"),
}


def rate(run: Run | None, supervised: int) -> float | None:
    return supervised / run.seconds if run and run.seconds > 0 else None


def verdict(key: str, value: float | None) -> str:
    what, ok, target = TARGETS[key]
    shown = "n/a" if value is None else f"{value:.3f}  {'met' if ok(value) else 'NOT MET'}"
    return f"{what + ' =':38} {shown:16} (target {target})"


def mib(n: int | None) -> str:
    return f"{n / 2**20:,.0f} MiB" if n else "n/a"


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def summary(*, sizes: Sizes, device: str, supervised: int, real_tokens: int, runs: dict[str, Run | None],
            memory: dict | None, quick: bool) -> str:
    a, a2, b, c, d = (runs.get(k) for k in ("a", "a2", "b", "c", "d"))
    ra, ra2, rb, rc, rd = (rate(run, supervised) for run in (a, a2, b, c, d))
    lines = [
        f"Training throughput, {MODEL_NAME} on {device}, LoRA r={LORA['r']} alpha={LORA['lora_alpha']} "
        f"dropout={LORA['lora_dropout']} on {','.join(LORA['target_modules'])}",
        f"{sizes.examples} examples x 1 epoch, batch {sizes.batch} x accumulation {sizes.accum} = {sizes.steps} optimizer "
        f"steps, max_seq_length {sizes.seq}; {real_tokens:,} tokens of which {supervised:,} supervised (response) tokens"
        + ("  [--quick: sizes too small to judge the targets]" if quick else ""),
        "versions: " + ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "trl")),
        "",
        "supervised tokens/s (supervised tokens / training-loop seconds):",
    ]
    if a:
        lines.append(f"  (a)  TRL SFTTrainer, its defaults   {ra:8.1f}   ({a.seconds:.1f} s in trainer.train(); gradient "
                     f"checkpointing {'on' if a.extra['gradient_checkpointing'] else 'off'}, padded batches, loss on all tokens)")
    if a2:
        lines.append(f"  (a2) TRL SFTTrainer, tuned          {ra2:8.1f}   ({a2.seconds:.1f} s in trainer.train(); padding-free, "
                     f"no gradient checkpointing, completion-only loss)")
        if not device.startswith("cuda"):
            lines.append("       ((a2)'s one row attends through a block-diagonal mask: on a CPU SDPA computes the row's whole "
                         "T x T; (b) and (d) attend per example: see the docstring)")
    if b:
        lines.append(f"  (b)  Nexus engine, directly         {rb:8.1f}   ({b.seconds:.1f} s in trainer.train())")
    if d:
        lines.append(f"  (d)  packed loop, compute limit     {rd:8.1f}   ({d.seconds:.1f} s in the loop: one row per "
                     f"micro-batch, LM head and loss at supervised positions only)")
    if c:
        lines.append(f"  (c)  Nexus through API/Celery/DB/ws {rc:8.1f}   ({c.seconds:.1f} s: the job's train_runtime_s)")
        if c.window and c.window[0] > 0:
            lines.append(f"       websocket, first to last metric {c.window[1] / c.window[0]:8.1f}   "
                         f"({c.window[1]:,} supervised tokens in {c.window[0]:.1f} s, steps 2..{sizes.steps})")
        lines.append(f"       end to end, POST to completed   {supervised / c.extra['end_to_end_s']:8.1f}   "
                     f"({c.extra['end_to_end_s']:.1f} s incl. model load, encoding, adapter save)")
    if b and b.window and b.window[0] > 0:
        lines.append(f"       (b) over the same metric window  {b.window[1] / b.window[0]:8.1f}   "
                     f"({b.window[1]:,} supervised tokens in {b.window[0]:.1f} s)")
    peaks = {kind: found["peak_memory_bytes"] for kind, found in (memory or {}).items()}
    lines += ["", verdict("b/a", ratio(rb, ra)), verdict("b/a2", ratio(rb, ra2)), verdict("b/d", ratio(rb, rd)),
              verdict("c/b", ratio(rc, rb)), verdict("mem b/a2", ratio(peaks.get("lora"), peaks.get("trl")))]
    for key, other in (("a", a), ("a2", a2), ("d", d)):
        if b and other and b.cpu and other.cpu:
            lines.append(f"(b)/({key}) by the trainer's CPU seconds = {other.cpu.trainer / b.cpu.trainer:.3f}   "
                         f"({other.cpu.trainer:.1f} vs {b.cpu.trainer:.1f} s; less sensitive to other load than wall time)")
    if b and c and b.window_cpu and c.window_cpu:
        lines.append(f"(c)/(b) by the trainer's CPU seconds over the metric window = "
                     f"{b.window_cpu.trainer / c.window_cpu.trainer:.3f}   ({c.window_cpu.trainer:.1f} vs "
                     f"{b.window_cpu.trainer:.1f} s)")
    if b and c and b.window and c.window and b.window[0] > 0 and c.window[0] > 0:
        lines.append(f"(c)/(b) over the metric window = {(c.window[1] / c.window[0]) / (b.window[1] / b.window[0]):.3f}")
    load = [(name, use) for name, use in (("(a)", a and a.cpu), ("(a2)", a2 and a2.cpu), ("(b)", b and b.cpu),
                                          ("(d)", d and d.cpu), ("(c) metric window", c and c.window_cpu)) if use]
    if load:
        lines.append("other processes' CPU use while each trainer ran, in cores (background noise; for (c) it includes "
                     "the web server, Postgres, Redis, Celery's main process and this bench's websocket client): "
                     + ", ".join(f"{name} {use.other / use.seconds:.2f}" for name, use in load))
    slots = [(name, run.extra.get("slots")) for name, run in (("(a)", a), ("(a2)", a2), ("(b)", b), ("(d)", d)) if run]
    if slots:
        lines.append("token slots computed (tokens fed through the model, padding included): "
                     + ", ".join(f"{name} {n:,}" if n else f"{name} n/a" for name, n in slots)
                     + f"; real tokens {real_tokens:,}")
    if memory:
        where = "allocated GPU memory" if device.startswith("cuda") else "process resident set, model load included"
        steps = next(iter(memory.values()))["steps"]
        lines += ["", f"peak memory over {steps} steps at batch {sizes.batch}, each in a fresh process ({where}):"]
        for kind, label in PROBES.items():
            if kind in memory:
                weights = memory[kind].get("weights_bytes")
                lines.append(f"  {label:24} {mib(memory[kind]['peak_memory_bytes']):>10}"
                             + (f"   (the model's tensors {mib(weights)})" if weights else ""))
        if "lora" in peaks and "qlora" in peaks:
            lines.append(f"  QLoRA/LoRA = {peaks['qlora'] / peaks['lora']:.3f}")
        if not device.startswith("cuda"):
            lines.append("  (on a CPU the resident set also counts the libraries, the activations and the model file's "
                         "mapped pages that loading touched, so it shows less of any saving than GPU memory does)")
    return "\n".join(lines).rstrip() + "\n"


def check_same_work(runs: dict[str, Run | None], supervised: int, steps: int) -> list[str]:
    problems = []
    for run in runs.values():
        if run is None:
            continue
        if run.supervised != supervised:
            problems.append(f"{run.label} trained on {run.supervised:,} supervised tokens, expected {supervised:,}")
        if run.extra.get("optimizer_steps") != steps:
            problems.append(f"{run.label} made {run.extra.get('optimizer_steps')} optimizer steps, expected {steps}")
        if run.extra.get("unknown_examples"):
            problems.append(f"{run.label}: its tokenization differs from ours for {run.extra['unknown_examples']} examples")
    a2 = runs.get("a2")
    if a2 and a2.extra["loss_tokens"] != supervised:
        problems.append(f"{a2.label} puts its loss on {a2.extra['loss_tokens']:,} tokens, the engine on {supervised:,}")
    reference = next((run for run in (runs.get("b"), runs.get("a2"), runs.get("a")) if run), None)
    for run in runs.values():
        if run and reference and run is not reference and run.step_supervised and run.step_supervised != reference.step_supervised:
            problems.append(f"{run.label} and {reference.label} did not see the same examples in the same optimizer steps "
                            f"(per-step supervised tokens {run.step_supervised} vs {reference.step_supervised})")
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
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-system", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--results", type=Path, help=f"where to write the summary (default {RESULTS.relative_to(ROOT)}; "
                                                      "--quick writes none unless given)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and the bench database")
    parser.add_argument("--memory-probe", choices=tuple(PROBES), help=argparse.SUPPRESS)
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
    runs: dict[str, Run | None] = {"a": None, "a2": None, "b": None, "d": None, "c": None}
    memory = None
    failed = True
    try:
        print("Warm-up (untimed): one optimizer step of the engine on the same data...")
        print(f"    {warm_up(records, sizes, workdir):.1f} s")
        if not opts.skip_trl:
            for key, tuned in (("a", False), ("a2", True)):
                print(f"({key}) TRL SFTTrainer, {'tuned' if tuned else 'with its defaults'}...")
                runs[key] = run_trl(records, sizes, supervised_by_ids, workdir, tuned=tuned)
                gc.collect()  # TRL's model and trainer hold reference cycles: free them before the next run
                print(f"    {runs[key].seconds:.1f} s; overrode: " + "; ".join(
                    f"{k}={v!r} ({why})" for k, (v, why) in runs[key].extra["overrides"].items() if k != "output_dir"))
                print("    kept TRL defaults: " + ", ".join(f"{k}={v!r}" for k, v in runs[key].extra["kept"].items()))
        if not opts.skip_engine:
            print("(b) Nexus engine, called directly...")
            runs["b"] = run_engine(records, sizes, supervised_by_ids, workdir)
            print(f"    {runs['b'].seconds:.1f} s in trainer.train(), {runs['b'].extra['call_seconds']:.1f} s for the whole call")
            for message in runs["b"].extra["log"]:
                print(f"    | {message}")
        if not opts.skip_loop:
            print("(d) a bare packed forward/backward loop (one untimed warm-up step first)...")
            runs["d"] = run_loop(examples, sizes, workdir)
            gc.collect()
            print(f"    {runs['d'].seconds:.1f} s in the loop")
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
            kinds = [k for k in PROBES if not (k == "trl" and opts.skip_trl) and not (k == "loop" and opts.skip_loop)]
            print(f"Peak memory ({sizes.probe_steps} steps at batch {sizes.batch} each, fresh subprocesses)...")
            memory = run_memory(sizes, kinds)
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
    for key in ("a", "a2"):
        if runs[key]:
            text += (f"\nTRL ({key}): overrode " + ", ".join(f"{k}={v!r}" for k, (v, _) in runs[key].extra["overrides"].items()
                                                       if k not in ("output_dir", "disable_tqdm", "report_to"))
                     + "; kept its defaults " + ", ".join(f"{k}={v!r}" for k, v in runs[key].extra["kept"].items()) + "\n")
    text += f"\nbench wall time {time.monotonic() - bench_started:.0f} s\n"
    print("\n==================== summary ====================")
    print(text, end="")
    results = opts.results or (None if opts.quick else RESULTS)
    if results:
        results.write_text(text)
        print(f"(written to {results})")


if __name__ == "__main__":
    main()
