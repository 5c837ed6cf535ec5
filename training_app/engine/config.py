"""Fine-tuning configuration: defaults and validation with errors that name the field. Django-free."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# adamw_torch everywhere; the bitsandbytes ones need CUDA and fall back (said in the job's log)
OPTIMIZERS = ("adamw_torch", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
PACKING = ("padding_free", "none")


class ConfigError(Exception):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(f"{first[0]}: {first[1]}")


@dataclass
class LoRAConfig:
    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    bias: str = "none"


@dataclass
class TrainingConfig:
    num_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4
    gradient_accumulation_steps: int = 4
    learning_rate: float = 2e-4
    max_seq_length: int = 2048
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    seed: int = 42
    logging_steps: int = 1
    gradient_checkpointing: bool = False
    save_steps: int = 0  # checkpoint every N optimizer steps; 0 picks about ten per run (at least every 50)
    save_total_limit: int = 2  # checkpoints kept (the last ones; the best by eval loss is kept as well)
    # padding_free: each micro-batch's examples are packed into as few rows as its longest one
    # needs, attention kept within each example; none: right-padded rows
    packing: str = "padding_free"
    optim: str = "adamw_torch"
    precision: str = "auto"  # auto: bf16 where the GPU has it, else fp32 (fp16 only when asked)
    # validation: a held-out fraction of the dataset, or a separate dataset given with the job
    validation_split: float = 0.0
    eval_steps: int = 0  # evaluate every N optimizer steps; 0: at every checkpoint
    early_stopping_patience: int = 0  # stop after N evaluations without improvement; 0: off
    early_stopping_threshold: float = 0.0  # an improvement must lower eval loss by more than this
    load_best_model_at_end: bool = True  # with validation: the adapter is the best checkpoint's


@dataclass
class QLoRAConfig:
    enabled: bool = False
    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"


@dataclass
class JobConfig:
    lora: LoRAConfig
    training: TrainingConfig
    qlora: QLoRAConfig

    def as_dicts(self) -> dict[str, dict[str, Any]]:
        return {"lora_config": asdict(self.lora), "training_config": asdict(self.training), "qlora_config": asdict(self.qlora)}


def _coerce(cls: type, section: str, raw: Any, errors: dict[str, str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors[section] = f"must be an object, got {type(raw).__name__}"
        return cls()
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{section}.{key}"
        if key not in known:
            errors[path] = f"unknown field; allowed: {', '.join(sorted(known))}"
            continue
        expected = type(getattr(defaults, key))
        if key == "target_modules":
            if isinstance(value, str) and value:
                values[key] = value
            elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
                values[key] = value
            else:
                errors[path] = "must be a non-empty list of module names or 'all-linear'"
            continue
        if expected is bool:
            if not isinstance(value, bool):
                errors[path] = f"must be true or false, got {value!r}"
                continue
        elif expected is int:
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
                errors[path] = f"must be an integer, got {value!r}"
                continue
            value = int(value)
        elif expected is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                errors[path] = f"must be a number, got {value!r}"
                continue
            value = float(value)
        elif expected is str and not isinstance(value, str):
            errors[path] = f"must be a string, got {value!r}"
            continue
        values[key] = value
    return cls(**values)


def _check(errors: dict[str, str], path: str, ok: bool, message: str) -> None:
    if not ok and path not in errors:
        errors[path] = message


def parse_job_config(lora: Any = None, training: Any = None, qlora: Any = None) -> JobConfig:
    errors: dict[str, str] = {}
    lc = _coerce(LoRAConfig, "lora_config", lora, errors)
    tc = _coerce(TrainingConfig, "training_config", training, errors)
    qc = _coerce(QLoRAConfig, "qlora_config", qlora, errors)

    _check(errors, "lora_config.r", 1 <= lc.r <= 1024, "must be between 1 and 1024")
    _check(errors, "lora_config.lora_alpha", 1 <= lc.lora_alpha <= 4096, "must be between 1 and 4096")
    _check(errors, "lora_config.lora_dropout", 0.0 <= lc.lora_dropout < 1.0, "must be in [0, 1)")
    _check(errors, "lora_config.bias", lc.bias in ("none", "all", "lora_only"), "must be one of none, all, lora_only")
    if isinstance(lc.target_modules, str):
        _check(errors, "lora_config.target_modules", lc.target_modules == "all-linear", "a string value must be 'all-linear'")

    _check(errors, "training_config.num_epochs", 0 < tc.num_epochs <= 100, "must be greater than 0 and at most 100")
    _check(errors, "training_config.max_steps", tc.max_steps == -1 or 1 <= tc.max_steps <= 1_000_000, "must be -1 (use epochs) or between 1 and 1000000")
    _check(errors, "training_config.batch_size", 1 <= tc.batch_size <= 1024, "must be between 1 and 1024")
    _check(errors, "training_config.gradient_accumulation_steps", 1 <= tc.gradient_accumulation_steps <= 1024, "must be between 1 and 1024")
    _check(errors, "training_config.learning_rate", 0 < tc.learning_rate <= 1.0, "must be greater than 0 and at most 1")
    _check(errors, "training_config.max_seq_length", 16 <= tc.max_seq_length <= 131072, "must be between 16 and 131072")
    _check(errors, "training_config.warmup_ratio", 0 <= tc.warmup_ratio < 1, "must be in [0, 1)")
    _check(errors, "training_config.weight_decay", 0 <= tc.weight_decay <= 1, "must be in [0, 1]")
    _check(errors, "training_config.lr_scheduler_type", tc.lr_scheduler_type in LR_SCHEDULERS, f"must be one of {', '.join(LR_SCHEDULERS)}")
    _check(errors, "training_config.max_grad_norm", tc.max_grad_norm > 0, "must be greater than 0")
    _check(errors, "training_config.logging_steps", tc.logging_steps >= 1, "must be at least 1")
    _check(errors, "training_config.save_steps", tc.save_steps >= 0, "must be 0 (automatic) or a positive number of steps")
    _check(errors, "training_config.save_total_limit", 1 <= tc.save_total_limit <= 100, "must be between 1 and 100")

    _check(errors, "training_config.packing", tc.packing in PACKING, f"must be one of {', '.join(PACKING)}")
    _check(errors, "training_config.optim", tc.optim in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}")
    _check(errors, "training_config.precision", tc.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}")
    _check(errors, "training_config.validation_split", 0 <= tc.validation_split <= 0.5, "must be in [0, 0.5]")
    _check(errors, "training_config.eval_steps", tc.eval_steps >= 0, "must be 0 (at every checkpoint) or a positive number of steps")
    _check(errors, "training_config.early_stopping_patience", 0 <= tc.early_stopping_patience <= 1000,
           "must be 0 (off) or a number of evaluations up to 1000")
    _check(errors, "training_config.early_stopping_threshold", tc.early_stopping_threshold >= 0, "must be 0 or more")
    if tc.save_steps and tc.eval_steps and tc.load_best_model_at_end:
        _check(errors, "training_config.save_steps", tc.save_steps % tc.eval_steps == 0,
               f"must be a multiple of eval_steps ({tc.eval_steps}) so that the best evaluated step has a checkpoint "
               "(or set load_best_model_at_end to false)")
    _check(errors, "qlora_config.bits", qc.bits == 4, "only 4-bit quantization is supported")
    _check(errors, "qlora_config.quant_type", qc.quant_type in ("nf4", "fp4"), "must be nf4 or fp4")
    _check(errors, "qlora_config.compute_dtype", qc.compute_dtype in COMPUTE_DTYPES, f"must be one of {', '.join(COMPUTE_DTYPES)}")
    if errors:
        raise ConfigError(errors)
    return JobConfig(lora=lc, training=tc, qlora=qc)
