"""LoRA / QLoRA fine-tuning with transformers + peft. Django-free.

`train()` takes a local HF model folder, normalized conversation records and a JobConfig, and
reports through a `TrainingHooks` object: per-step metrics, log lines, and a stop flag that is
checked after every optimizer step (cooperative cancel).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

from training_app.engine.config import JobConfig
from training_app.engine.data import PaddingCollator, encode_records


class TrainingHooks(Protocol):
    def log(self, message: str, level: str = "info") -> None: ...
    def on_start(self, *, total_steps: int, num_examples: int) -> None: ...
    def on_step(self, metrics: dict[str, Any]) -> None: ...
    def should_stop(self) -> str | None: ...  # None, "cancel" or "pause"


@dataclass
class TrainResult:
    status: str  # completed | cancelled | paused
    adapter_dir: Path | None
    steps: int
    total_steps: int
    final_loss: float | None
    best_loss: float | None
    runtime_s: float
    tokens_seen: int


def _memory_in_use() -> int:
    """Peak GPU memory allocated so far, or this process's resident memory on the CPU."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    import psutil

    return int(psutil.Process().memory_info().rss)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with trainer state), oldest first."""
    folder = Path(output_dir) / "trainer"
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def device_summary() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def compute_dtype_for(config: JobConfig) -> tuple[str, str | None]:
    """The QLoRA compute dtype to use here, and a message when the requested one is not used."""
    import torch

    wanted = config.qlora.compute_dtype
    if wanted == "float32":
        return wanted, None
    if not torch.cuda.is_available():
        return "float32", (f"{wanted} compute is not supported at speed on this CPU; QLoRA computes in float32 "
                           "(the weights stay 4-bit NF4)")
    if wanted == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "float16", "this GPU has no bfloat16; QLoRA computes in float16"
    return wanted, None


def load_model_for_training(model_dir: str | Path, config: JobConfig) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {}
    if config.qlora.enabled:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.qlora.quant_type,
            bnb_4bit_use_double_quant=config.qlora.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype_for(config)[0]),
        )
    elif torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if config.qlora.enabled:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training.gradient_checkpointing)
    elif config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.lora_alpha,
        lora_dropout=config.lora.lora_dropout,
        target_modules=config.lora.target_modules,
        bias=config.lora.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def train(
    *,
    model_dir: str | Path,
    records: Iterable[dict],
    config: JobConfig,
    output_dir: str | Path,
    hooks: TrainingHooks,
) -> TrainResult:
    import torch
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    tc = config.training
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_seed(tc.seed)
    hooks.log(f"Loading base model from {model_dir} on {device_summary()}")
    if config.qlora.enabled:
        dtype, note = compute_dtype_for(config)
        hooks.log(f"QLoRA: 4-bit {config.qlora.quant_type}{' with double quantization' if config.qlora.double_quant else ''}, "
                  f"{dtype} compute")
        if note:
            hooks.log(note, "warning")
    model, tokenizer = load_model_for_training(model_dir, config)
    trainable, total = model.get_nb_trainable_parameters()
    hooks.log(f"LoRA r={config.lora.r} alpha={config.lora.lora_alpha}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%)")

    examples, skipped = encode_records(tokenizer, records, tc.max_seq_length)
    if skipped:
        hooks.log(f"{skipped} example(s) had no response tokens within max_seq_length={tc.max_seq_length} and were skipped", "warning")
    if not examples:
        raise ValueError(f"No trainable examples: every response starts beyond max_seq_length={tc.max_seq_length}")
    steps_per_epoch = max(1, math.ceil(len(examples) / (tc.batch_size * tc.gradient_accumulation_steps)))
    total_steps = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(steps_per_epoch * tc.num_epochs))
    hooks.log(f"{len(examples)} examples, {steps_per_epoch} optimizer steps per epoch, {total_steps} steps in total")
    hooks.on_start(total_steps=total_steps, num_examples=len(examples))

    collator = PaddingCollator(tokenizer.pad_token_id)
    state: dict[str, Any] = {"stop": None, "best": None, "last": None, "t": time.monotonic(), "tokens": 0, "seen": 0}

    class _Hooks(TrainerCallback):
        def on_log(self, args, tstate, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            now = time.monotonic()
            tokens = state["seen"] - state["tokens"]
            elapsed = max(now - state["t"], 1e-6)
            state["t"], state["tokens"] = now, state["seen"]
            step_before = state.get("last_step", 0)
            state["last_step"] = tstate.global_step
            loss = float(logs["loss"])
            state["last"] = loss
            state["best"] = loss if state["best"] is None else min(state["best"], loss)
            hooks.on_step(
                {
                    "step": tstate.global_step,
                    "total_steps": tstate.max_steps,
                    "epoch": round(float(tstate.epoch or 0), 4),
                    "loss": loss,
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                    "tokens_per_second": round(tokens / elapsed, 1),
                    "tokens_seen": state["seen"],
                    "seconds_per_step": round(elapsed / max(tstate.global_step - step_before, 1), 3),
                    "memory_bytes": _memory_in_use(),
                }
            )

        def on_step_end(self, args, tstate, control, **kw):
            request = hooks.should_stop()
            if request:
                state["stop"] = request
                control.should_training_stop = True
                # pausing keeps a checkpoint of this very step to resume from; cancelling keeps nothing new
                control.should_save = request == "pause"

    use_cuda = torch.cuda.is_available()
    save_steps = tc.save_steps or max(1, min(50, total_steps // 10))
    checkpoint = latest_checkpoint(output_dir)
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        learning_rate=tc.learning_rate,
        num_train_epochs=tc.num_epochs,
        max_steps=total_steps,
        warmup_steps=int(round(tc.warmup_ratio * total_steps)),
        weight_decay=tc.weight_decay,
        lr_scheduler_type=tc.lr_scheduler_type,
        max_grad_norm=tc.max_grad_norm,
        logging_steps=tc.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=tc.save_total_limit,
        report_to="none",
        seed=tc.seed,
        use_cpu=not use_cuda,
        bf16=use_cuda and torch.cuda.is_bf16_supported(),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    class _CountingTrainer(Trainer):
        # Count tokens when a batch is trained on, not when the dataloader prefetches it.
        def training_step(self, model, inputs, *a, **kw):
            state["seen"] += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, *a, **kw)

    trainer = _CountingTrainer(model=model, args=args, train_dataset=examples, data_collator=collator, callbacks=[_Hooks()])
    trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    if checkpoint is not None:
        step = int(checkpoint.name.split("-")[-1])
        hooks.log(f"Resuming from checkpoint at step {step} (adapter, optimizer, scheduler and RNG state)")
        state["last_step"] = step
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    runtime = time.monotonic() - started
    steps = int(output.global_step)
    if state["stop"] == "cancel":
        hooks.log(f"Stopped at step {steps} of {total_steps} on request", "warning")
        return TrainResult("cancelled", None, steps, total_steps, state["last"], state["best"], runtime, state["seen"])
    if state["stop"] == "pause":
        hooks.log(f"Paused at step {steps} of {total_steps}; checkpoint saved", "warning")
        return TrainResult("paused", None, steps, total_steps, state["last"], state["best"], runtime, state["seen"])
    adapter_dir = output_dir / "adapter"
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    hooks.log(f"Saved PEFT adapter to {adapter_dir} after {steps} steps in {runtime:.1f}s")
    return TrainResult("completed", adapter_dir, steps, total_steps, state["last"], state["best"], runtime, state["seen"])
