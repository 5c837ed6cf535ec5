"""LoRA / QLoRA fine-tuning with transformers + peft. Django-free.

`train()` takes a local HF model folder, normalized conversation records and a JobConfig, and
reports through a `TrainingHooks` object: per-step metrics, log lines, and a stop flag that is
checked after every optimizer step (cooperative cancel).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from training_app.engine.checkpoints import checkpoint_step, latest_checkpoint
from training_app.engine.config import JobConfig, global_batch, steps_per_epoch, total_steps_for, warmup_steps_for
from training_app.engine.distributed import backend, barrier, share_step, world
from training_app.engine.data import encode_records
from training_app.engine.lean import ATTENTION, make_lean, register_attention, varlen_reason
from training_app.engine.loss import SupervisedLoss, plain_loss_reason


class TrainingHooks(Protocol):
    def log(self, message: str, level: str = "info") -> None: ...
    def warn(self, message: str) -> None: ...  # a setting the run could not honour as asked: the job's warnings
    def on_start(self, *, total_steps: int, num_examples: int, num_eval_examples: int) -> None: ...
    def on_phase(self, phase: str) -> None: ...  # training | evaluating | exporting
    def on_step(self, metrics: dict[str, Any]) -> None: ...
    def on_evaluate(self, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, *, reason: str) -> None: ...
    def poll(self) -> set[str]: ...  # control commands since the last poll: stop, pause, checkpoint


class NullHooks:
    """Hooks that only collect metrics (benchmarks, engine tests)."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.evaluations: list[dict] = []
        self.messages: list[tuple[str, str]] = []
        self.commands: list[set[str]] = []  # what poll() returns, one entry per step (tests script it)
        self.warnings: list[str] = []

    def log(self, message: str, level: str = "info") -> None:
        self.messages.append((level, message))

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(message, "warning")

    def on_start(self, **kw: Any) -> None:
        pass

    def on_phase(self, phase: str) -> None:
        pass

    def on_step(self, metrics: dict[str, Any]) -> None:
        self.metrics.append(metrics)

    def on_evaluate(self, metrics: dict[str, Any]) -> None:
        self.evaluations.append(metrics)

    def on_checkpoint(self, step: int, *, reason: str) -> None:
        pass

    def poll(self) -> set[str]:
        return self.commands.pop(0) if self.commands else set()


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
    supervised_tokens: int = 0
    peak_memory_bytes: int = 0
    best_eval_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False


class MemoryMeter:
    """Memory in use and its peak since `reset()`: allocated GPU memory on CUDA; on the CPU the
    process's resident set, whose high-water mark Linux resets through /proc/self/clear_refs."""

    def __init__(self) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self._floor = 0

    def reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:  # not Linux, or not allowed: the lifetime peak is the best we have
            pass

    def current(self) -> int:
        import torch

        if self.cuda:
            return int(torch.cuda.memory_allocated())
        import psutil

        return int(psutil.Process().memory_info().rss)

    def peak(self) -> int:
        import torch

        if self.cuda:
            return int(torch.cuda.max_memory_allocated())
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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
        return "float32", (f"qlora_config.compute_dtype: {wanted} compute is not supported at speed on this CPU; QLoRA computes in float32 "
                           "(the weights stay 4-bit NF4)")
    if wanted == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "float16", "qlora_config.compute_dtype: this GPU has no bfloat16; QLoRA computes in float16"
    return wanted, None


def qlora_for(config: JobConfig) -> tuple[bool, str | None]:
    """Whether the base loads in 4 bits, and a message when QLoRA was asked for but cannot run here."""
    if not config.qlora.enabled:
        return False, None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason to fall back, not to fail
        return False, (f"qlora_config.enabled: 4-bit loading needs bitsandbytes, which cannot be loaded here ({exc}); "
                       "training the adapter on the unquantized model")
    return True, None


def precision_for(config: JobConfig) -> tuple[str, str | None]:
    """bf16 / fp16 / fp32 for the training loop (from the design's fp16 and bf16 flags), and a
    message when the requested one is not used."""
    import torch

    tc = config.training
    wanted = "bf16" if tc.bf16 else "fp16" if tc.fp16 else "fp32"
    if wanted == "fp32":
        return "fp32", None
    if not torch.cuda.is_available():
        return "fp32", f"training_config.{wanted}: {wanted} mixed precision is not supported at speed on this CPU; training in float32"
    if wanted == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", f"training_config.bf16: this GPU ({torch.cuda.get_device_name(0)}) has no bfloat16; training in float16"
    return wanted, None


def optimizer_for(config: JobConfig) -> tuple[str, str | None]:
    """The transformers `optim` name for the chosen optimizer, and a message when it falls back.
    bitsandbytes' 8-bit AdamW runs on CUDA and on the CPU; paging needs CUDA unified memory."""
    import torch

    wanted = config.training.optimizer
    if wanted == "adamw_torch":
        return "adamw_torch", None
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install is a reason to fall back, not to fail
        return "adamw_torch", (f"training_config.optimizer: {wanted} needs bitsandbytes, which cannot be loaded here ({exc}); using "
                               "32-bit AdamW (adamw_torch)")
    if wanted == "adamw_8bit":
        return "adamw_bnb_8bit", None
    if torch.cuda.is_available():
        return wanted, None
    if wanted == "paged_adamw_8bit":
        return "adamw_bnb_8bit", ("training_config.optimizer: paged optimizers need a CUDA GPU; on this CPU paged_adamw_8bit "
                                  "runs as adamw_8bit (not paged)")
    return "adamw_torch", ("training_config.optimizer: paged optimizers need a CUDA GPU; on this CPU paged_adamw_32bit "
                           "runs as adamw_torch (not paged)")


def load_model_for_training(model_dir: str | Path, config: JobConfig) -> tuple[Any, Any]:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {}
    precision = precision_for(config)[0]
    if config.qlora.enabled:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.qlora.quant_type,
            bnb_4bit_use_double_quant=config.qlora.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype_for(config)[0]),
        )
    else:
        kwargs["dtype"] = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": world().local_rank}  # each rank its own GPU of CUDA_VISIBLE_DEVICES
    if varlen_reason(model_dir, config) is None:
        kwargs["attn_implementation"] = register_attention()
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    model.config.use_cache = False  # training needs no KV cache (and packed rows must not get one)
    if config.qlora.enabled:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training.gradient_checkpointing)
    elif config.training.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=config.lora.rank,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        bias=config.lora.bias,
        use_rslora=config.lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    make_lean(model)
    return model, tokenizer


def schedule_for(config: JobConfig, total_steps: int, has_eval: bool) -> tuple[int, int]:
    """(save_steps, eval_steps): about ten checkpoints a run unless set; evaluation at every
    checkpoint unless eval_steps is set (then checkpoints follow it)."""
    tc = config.training
    save = tc.save_steps or (tc.eval_steps if has_eval and tc.eval_steps else max(1, min(50, total_steps // 10)))
    return save, (tc.eval_steps or save)


def train(
    *,
    model_dir: str | Path,
    records: Iterable[dict],
    config: JobConfig,
    output_dir: str | Path,
    hooks: TrainingHooks,
    eval_records: Iterable[dict] | None = None,
    model_callback: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Under torchrun each rank calls this with the same arguments (DDP: gloo on the CPU, NCCL on
    CUDA); only rank 0's hooks should write anything, and only rank 0 saves the adapter.
    `model_callback` sees the trained model on every rank (tests compare the ranks' weights)."""
    import torch
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

    from training_app.engine.data import COUNT_KEYS, make_collator, split_validation

    ranks = world()
    if config.training.num_gpus != ranks.size:
        hooks.warn(f"training_config.num_gpus: {config.training.num_gpus} asked, but this run has {ranks.size} "
                   f"process(es); steps are counted for {ranks.size}")
        config = replace(config, training=replace(config.training, num_gpus=ranks.size))
    tc = config.training
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    memory = MemoryMeter()
    memory.reset()
    set_seed(tc.seed)
    hooks.log(f"Loading base model from {model_dir} on {device_summary()}")
    precision, note = precision_for(config)
    if note:
        hooks.warn(note)
    quantized, note = qlora_for(config)
    if note:
        hooks.warn(note)
        config = replace(config, qlora=replace(config.qlora, enabled=False))
    if config.qlora.enabled:
        dtype, note = compute_dtype_for(config)
        hooks.log(f"QLoRA: 4-bit {config.qlora.quant_type}{' with double quantization' if config.qlora.double_quant else ''}, "
                  f"{dtype} compute")
        if note:
            hooks.warn(note)
    optim, note = optimizer_for(config)
    if note:
        hooks.warn(note)
    model, tokenizer = load_model_for_training(model_dir, config)
    trainable, total = model.get_nb_trainable_parameters()
    hooks.log(f"LoRA rank={config.lora.rank} alpha={config.lora.alpha}: {trainable:,} trainable of {total:,} parameters "
              f"({100 * trainable / total:.2f}%); {precision}, {optim}, "
              f"{'padding-free packing' if tc.packing == 'padding_free' else 'padded batches'}"
              f"{', gradient checkpointing' if tc.gradient_checkpointing else ''}")
    plain_reason = plain_loss_reason(model)
    # the loss from the decoder's output at supervised tokens, the logits a chunk at a time (engine/loss.py)
    loss_func = SupervisedLoss(model) if plain_reason is None else None
    if plain_reason:
        hooks.log(f"The loss is computed from every position's logits: {plain_reason}")

    examples, skipped = encode_records(tokenizer, records, tc.max_seq_length)
    if skipped:
        hooks.log(f"{skipped} example(s) had no response tokens within max_seq_length={tc.max_seq_length} and were skipped", "warning")
    if eval_records is not None:
        eval_examples, eval_skipped = encode_records(tokenizer, eval_records, tc.max_seq_length)
        if eval_skipped:
            hooks.log(f"{eval_skipped} validation example(s) had no response tokens within max_seq_length and were skipped", "warning")
    else:
        examples, eval_examples = split_validation(examples, tc.validation_split, tc.seed)
    if not examples:
        raise ValueError(f"No trainable examples: every response starts beyond max_seq_length={tc.max_seq_length}")
    has_eval = bool(eval_examples)
    if tc.early_stopping_patience and not has_eval:
        raise ValueError("early stopping needs validation data: set training_config.validation_split or give an eval dataset")
    total_steps = total_steps_for(config, len(examples))
    save_steps, eval_steps = schedule_for(config, total_steps, has_eval)
    warmup_steps = warmup_steps_for(config, total_steps)
    if warmup_steps >= total_steps:
        hooks.warn(f"training_config.warmup_steps: {warmup_steps} warmup steps are not shorter than this run's {total_steps} steps: the learning rate "
                   f"never reaches learning_rate={tc.learning_rate:g} (it peaks at "
                   f"{tc.learning_rate * total_steps / max(warmup_steps, 1):.2g}); set warmup_steps lower or train longer")
    if ranks.size > 1:
        hooks.log(f"Data parallel on {ranks.size} processes ({backend()}): global batch {global_batch(tc)} = batch_size "
                  f"{tc.batch_size} x gradient_accumulation_steps {tc.gradient_accumulation_steps} x {ranks.size} processes")
    hooks.log(f"{len(examples)} training examples, {steps_per_epoch(tc, len(examples))} optimizer steps per epoch, {total_steps} steps in total; "
              f"warmup {warmup_steps} steps, {tc.lr_scheduler} schedule; checkpoint every {save_steps} steps"
              + (f"; validation loss on {len(eval_examples)} examples every {eval_steps} steps" if has_eval else ""))
    hooks.on_start(total_steps=total_steps, num_examples=len(examples), num_eval_examples=len(eval_examples))

    one_row = model.config._attn_implementation == ATTENTION  # packed rows attend per example: one row, no padding
    collator = make_collator(tc.packing, tokenizer.pad_token_id, one_row)
    state: dict[str, Any] = {"stop": None, "best": None, "last": None, "t": time.monotonic(), "tokens": 0, "seen": 0,
                             "supervised": 0, "step_counts": [0, 0], "checkpoint_reason": None}

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
                    "supervised_tokens_seen": state["supervised"],
                    "seconds_per_step": round(elapsed / max(tstate.global_step - step_before, 1), 3),
                    "memory_bytes": memory.current(),
                    "peak_memory_bytes": memory.peak(),
                }
            )

        def on_evaluate(self, args, tstate, control, metrics=None, **kw):
            if not metrics or "eval_loss" not in metrics:
                return
            # called before the Trainer records a new best: compare with the best so far here
            loss = float(metrics["eval_loss"])
            best, best_step = tstate.best_metric, tstate.best_global_step
            if best is None or loss < best:
                best, best_step = loss, tstate.global_step
            hooks.on_evaluate({"step": tstate.global_step, "eval_loss": loss, "best_eval_loss": float(best),
                               "best_step": best_step, "eval_seconds": round(float(metrics.get("eval_runtime", 0.0)), 3)})

        def on_step_end(self, args, tstate, control, **kw):
            commands = hooks.poll()
            counts, state["step_counts"] = state["step_counts"], [0, 0]
            if ranks.size > 1:  # every rank, every step: rank 0's commands to all, the tokens of all
                commands, counts = share_step(commands, counts, args.device)
            state["seen"] += counts[0]
            state["supervised"] += counts[1]
            if "stop" in commands:
                state["stop"] = "cancel"
                control.should_training_stop = True
                control.should_save = False  # cancelling keeps nothing new
            elif "pause" in commands:
                state["stop"] = "pause"
                control.should_training_stop = True
                control.should_save = True  # pausing keeps a checkpoint of this very step to resume from
                state["checkpoint_reason"] = "pause"
            elif "checkpoint" in commands:
                control.should_save = True
                state["checkpoint_reason"] = "request"

        def on_save(self, args, tstate, control, **kw):
            barrier()  # every rank's files (its RNG state) are in the checkpoint before it is reported
            hooks.on_checkpoint(tstate.global_step, reason=state["checkpoint_reason"] or "schedule")
            state["checkpoint_reason"] = None

    checkpoint = latest_checkpoint(output_dir)
    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        learning_rate=tc.learning_rate,
        num_train_epochs=tc.num_epochs,
        max_steps=total_steps,
        warmup_steps=warmup_steps,
        weight_decay=tc.weight_decay,
        lr_scheduler_type=tc.lr_scheduler,
        max_grad_norm=tc.max_grad_norm,
        optim=optim,
        logging_steps=tc.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=tc.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        metric_for_best_model="eval_loss" if has_eval else None,
        greater_is_better=False if has_eval else None,
        load_best_model_at_end=has_eval and tc.load_best_model_at_end,
        prediction_loss_only=True,
        report_to="none",
        seed=tc.seed,
        data_seed=tc.seed,  # the shuffled order is the seed's alone: each rank takes every Nth micro-batch of it
        use_cpu=not torch.cuda.is_available(),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_backend=backend() if ranks.size > 1 else None,
        ddp_find_unused_parameters=False,  # read only under torchrun (DDP): every LoRA weight trains at every step
    )

    class _NexusTrainer(Trainer):
        def training_step(self, model, inputs, *a, **kw):
            # count tokens when a batch is trained on, not when the dataloader prefetches it (summed at the step's end)
            state["step_counts"][0] += int(inputs["num_tokens"])
            state["step_counts"][1] += int(inputs["num_supervised"])
            return super().training_step(model, inputs, *a, **kw)

        def compute_loss(self, model, inputs, *a, **kw):
            # use_cache=False matters: transformers builds the per-example (block-diagonal) mask of
            # packed rows only when no KV cache is in play
            inputs = {k: v for k, v in inputs.items() if k not in COUNT_KEYS}
            if loss_func is not None:
                inputs.update(loss_func.extra_inputs)
            return super().compute_loss(model, {**inputs, "use_cache": False}, *a, **kw)

        def evaluate(self, *a, **kw):
            hooks.on_phase("evaluating")
            try:
                return super().evaluate(*a, **kw)
            finally:
                hooks.on_phase("training")

    callbacks: list[Any] = [_Hooks()]
    if tc.early_stopping_patience:
        if not tc.load_best_model_at_end:
            raise ValueError("early stopping keeps the best checkpoint: it needs training_config.load_best_model_at_end")
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.early_stopping_patience,
                                               early_stopping_threshold=tc.early_stopping_threshold))
    trainer = _NexusTrainer(model=model, args=args, train_dataset=examples, eval_dataset=eval_examples or None,
                            data_collator=collator, callbacks=callbacks, compute_loss_func=loss_func)
    trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        hooks.log(f"Resuming from checkpoint at step {step} (adapter, optimizer, scheduler and RNG state)")
        state["last_step"] = step
    hooks.on_phase("training")
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if loss_func is not None:
        loss_func.remove()
    runtime = time.monotonic() - started
    steps = int(output.global_step)
    tstate = trainer.state
    best_eval = float(tstate.best_metric) if has_eval and tstate.best_metric is not None else None
    best_step = int(tstate.best_global_step) if has_eval and tstate.best_global_step else None

    def result(status: str, adapter_dir: Path | None, stopped_early: bool = False) -> TrainResult:
        return TrainResult(status, adapter_dir, steps, total_steps, state["last"], state["best"], runtime, state["seen"],
                           state["supervised"], memory.peak(), best_eval, best_step, stopped_early)

    if state["stop"] == "cancel":
        hooks.log(f"Stopped at step {steps} of {total_steps} on request", "warning")
        return result("cancelled", None)
    if state["stop"] == "pause" and steps < total_steps:
        hooks.log(f"Paused at step {steps} of {total_steps}; checkpoint saved", "warning")
        return result("paused", None)
    stopped_early = steps < total_steps and state["stop"] is None
    if stopped_early:
        hooks.log(f"Stopped early at step {steps} of {total_steps}: validation loss did not improve by more than "
                  f"{tc.early_stopping_threshold} for {tc.early_stopping_patience} evaluations", "warning")
    hooks.on_phase("exporting")
    if args.load_best_model_at_end and best_step is not None:
        hooks.log(f"The adapter is the best checkpoint's: step {best_step}, validation loss {best_eval:.4f}")
    if model_callback is not None:
        model_callback(model)
    adapter_dir = output_dir / "adapter"
    if ranks.main:  # every rank holds the same weights
        model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(str(adapter_dir))
    hooks.log(f"Saved PEFT adapter to {adapter_dir} after {steps} steps in {runtime:.1f}s")
    return result("completed", adapter_dir, stopped_early)
