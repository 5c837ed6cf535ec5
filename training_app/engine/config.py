"""Fine-tuning configuration: the design's names and defaults (section 5.3), the PEFT and
transformers spellings accepted as aliases, and validation with errors that name the field.
Django-free.

Every field is declared once, as a dataclass field whose metadata carries its description, its
aliases and whether section 5.3 names it; parsing, the error messages, the stored form and the
OpenAPI schema all come from these declarations."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

# the seven projections of section 5.3's LoRAConfig default
DESIGN_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
# adamw_torch everywhere; the bitsandbytes ones fall back where the hardware cannot run them (said in the job's warnings)
OPTIMIZERS = ("adamw_8bit", "adamw_torch", "paged_adamw_8bit", "paged_adamw_32bit")
PACKING = ("padding_free", "none")
BIASES = ("none", "all", "lora_only")
# the earlier API's `precision` (still accepted on input) as the design's fp16/bf16 pair
PRECISION_FLAGS = {"auto": (False, True), "bf16": (False, True), "fp16": (True, False), "fp32": (False, False)}
SECTIONS = ("lora_config", "training_config", "qlora_config")
MAX_GPUS = 16  # training_config.num_gpus: the GPUs of one host


class ConfigError(Exception):
    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        first = next(iter(errors.items()))
        super().__init__(f"{first[0]}: {first[1]}")


def _f(default: Any, help: str, *, kind: str, design: bool = False, aliases: tuple[str, ...] = (),
       choices: tuple[str, ...] = ()) -> Any:
    """A config field: `kind` is int, float, bool, str or modules; a trailing ? allows null."""
    meta = {"help": help, "kind": kind, "design": design, "aliases": aliases, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class LoRAConfig:
    rank: int = _f(32, "LoRA rank: the inner dimension of each adapter matrix pair.", kind="int", design=True,
                   aliases=("r",))
    alpha: int = _f(64, "LoRA alpha: the update is scaled by alpha / rank.", kind="int", design=True,
                    aliases=("lora_alpha",))
    dropout: float = _f(0.05, "Dropout on the adapter's input during training.", kind="float", design=True,
                        aliases=("lora_dropout",))
    target_modules: list[str] | str = _f(
        DESIGN_TARGET_MODULES, "Linear modules to adapt: a list of names or 'all-linear'. Left out: the seven "
        "projections where the model has them, else its architecture's default (said in the job's warnings).",
        kind="modules", design=True)
    bias: str = _f("none", "Which biases train: none, all or lora_only.", kind="str", design=True, choices=BIASES)
    use_rslora: bool = _f(False, "Rank-stabilized LoRA: scale by alpha / sqrt(rank) instead of alpha / rank.",
                          kind="bool")


@dataclass
class TrainingConfig:
    learning_rate: float = _f(2e-4, "Peak learning rate.", kind="float", design=True)
    batch_size: int = _f(4, "Examples per micro-batch (per device).", kind="int", design=True,
                         aliases=("per_device_train_batch_size",))
    gradient_accumulation_steps: int = _f(4, "Micro-batches per optimizer step; the effective batch is "
                                          "batch_size x gradient_accumulation_steps (x num_gpus).", kind="int", design=True)
    num_epochs: float = _f(3, "Passes over the training data (fractions allowed); max_steps wins when set.",
                           kind="float", design=True, aliases=("num_train_epochs",))
    max_steps: int | None = _f(None, "Optimizer steps to train for; null trains for num_epochs (-1 is taken as null).",
                               kind="int?", design=True)
    warmup_steps: int | None = _f(100, "Optimizer steps of linear learning-rate warmup (null when warmup_ratio is "
                                  "given).", kind="int?", design=True)
    weight_decay: float = _f(0.01, "AdamW weight decay.", kind="float", design=True)
    optimizer: str = _f("adamw_8bit", "adamw_8bit (bitsandbytes), adamw_torch, paged_adamw_8bit or paged_adamw_32bit "
                        "(paged ones need CUDA; elsewhere the nearest is used and said in the job's warnings).",
                        kind="str", design=True, aliases=("optim",), choices=OPTIMIZERS)
    lr_scheduler: str = _f("cosine", "Learning-rate schedule after warmup.", kind="str", design=True,
                           aliases=("lr_scheduler_type",), choices=LR_SCHEDULERS)
    max_seq_length: int = _f(2048, "Tokens per example; longer examples are cut. Left out and longer than the "
                             "model's context: the context is used (said in the job's warnings).", kind="int",
                             design=True)
    fp16: bool = _f(False, "Train in float16 mixed precision (CUDA).", kind="bool", design=True)
    bf16: bool = _f(True, "Train in bfloat16 mixed precision where the GPU has it; elsewhere the nearest (float16 on "
                    "an older GPU, float32 on a CPU), said in the job's warnings.", kind="bool", design=True)
    warmup_ratio: float | None = _f(None, "Warmup as a fraction of the run's steps, instead of warmup_steps "
                                    "(transformers' spelling; give one of the two).", kind="float?")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", kind="float")
    seed: int = _f(42, "Seed for the data order, dropout and the validation split.", kind="int")
    logging_steps: int = _f(1, "Record the loss every N optimizer steps.", kind="int")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less memory, ~30% slower.",
                                      kind="bool")
    save_steps: int = _f(0, "Checkpoint every N optimizer steps; 0 picks about ten per run (at least every 50).",
                         kind="int")
    save_total_limit: int = _f(2, "Checkpoints kept (the last ones; the best by validation loss is kept as well).",
                               kind="int")
    packing: str = _f("padding_free", "padding_free: each micro-batch's examples packed without padding (one row "
                      "where the model attends per example, else as few rows as its longest needs), attention kept "
                      "within each example; none: right-padded rows.", kind="str",
                      choices=PACKING)
    validation_split: float = _f(0.0, "Fraction of the dataset held out for validation (or give eval_dataset_id).",
                                 kind="float")
    eval_steps: int = _f(0, "Validation loss every N optimizer steps; 0: at every checkpoint.", kind="int")
    early_stopping_patience: int = _f(0, "Stop after N evaluations without improvement; 0: off.", kind="int")
    early_stopping_threshold: float = _f(0.0, "An improvement must lower the validation loss by more than this.",
                                         kind="float")
    load_best_model_at_end: bool = _f(True, "With validation data: the adapter is the best checkpoint's.",
                                      kind="bool")
    num_gpus: int = _f(1, "GPUs of one worker host to train on, one process each (data parallel under torchrun); "
                       "batch_size stays per GPU, so the global batch is batch_size x gradient_accumulation_steps x "
                       "num_gpus and the steps shrink by num_gpus. Jobs above 1 go to the Celery queue gpu.<num_gpus>.",
                       kind="int")


@dataclass
class QLoRAConfig:
    enabled: bool = _f(True, "Load the base model in 4 bits (bitsandbytes) and train the adapter on top.",
                       kind="bool", design=True, aliases=("load_in_4bit",))
    bits: int = _f(4, "Quantization bits (4).", kind="int", design=True)
    quant_type: str = _f("nf4", "nf4 or fp4.", kind="str", design=True, aliases=("bnb_4bit_quant_type",),
                         choices=("nf4", "fp4"))
    double_quant: bool = _f(True, "Quantize the quantization constants too (saves ~0.4 bits per weight).",
                            kind="bool", design=True, aliases=("bnb_4bit_use_double_quant",))
    compute_dtype: str = _f("bfloat16", "dtype of the matmuls over the 4-bit weights; the nearest the hardware has "
                            "is used (said in the job's warnings).", kind="str", design=True,
                            aliases=("bnb_4bit_compute_dtype",), choices=COMPUTE_DTYPES)


SECTION_CLASSES: dict[str, type] = {"lora_config": LoRAConfig, "training_config": TrainingConfig,
                                    "qlora_config": QLoRAConfig}
# input-only spellings that set other fields: training_config.precision -> fp16/bf16
_DERIVED = {"training_config": {"precision": ("fp16", "bf16")}}


@dataclass
class JobConfig:
    lora: LoRAConfig
    training: TrainingConfig
    qlora: QLoRAConfig

    def as_dicts(self) -> dict[str, dict[str, Any]]:
        return {"lora_config": asdict(self.lora), "training_config": asdict(self.training), "qlora_config": asdict(self.qlora)}


def field_specs(section: str) -> list[dict[str, Any]]:
    """Name, kind, default, description, aliases and design flag of each field of a section, design fields first."""
    specs = []
    for f in fields(SECTION_CLASSES[section]):
        default = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
        specs.append({"name": f.name, "default": default, **f.metadata})
    return sorted(specs, key=lambda s: not s["design"])


def _spellings(section: str) -> dict[str, str]:
    """Every accepted input key of a section -> the field it sets."""
    names = {}
    for spec in field_specs(section):
        names[spec["name"]] = spec["name"]
        names.update({alias: spec["name"] for alias in spec["aliases"]})
    return names


def allowed_names(section: str) -> str:
    specs = field_specs(section)
    aliases = [f"{a} ({s['name']})" for s in specs for a in s["aliases"]]
    aliases += [f"{k} ({'/'.join(v)})" for k, v in _DERIVED.get(section, {}).items()]
    text = ", ".join(s["name"] for s in specs)
    return text + (f"; also accepted: {', '.join(aliases)}" if aliases else "")


def canonical_section(section: str, raw: Any, errors: dict[str, str] | None = None,
                      spelled_as: dict[str, str] | None = None) -> dict[str, Any]:
    """A section as given, with every key in the design's spelling; unknown keys and two spellings of
    one field are errors (recorded in `errors` when given, else raised). Values are not checked here."""
    own = errors is None
    errors = {} if errors is None else errors
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors[section] = f"must be an object, got {type(raw).__name__}"
        if own:
            raise ConfigError(errors)
        return {}
    spelled = _spellings(section)
    derived = _DERIVED.get(section, {})
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in raw.items():
        if key in derived:
            name = key
        elif key in spelled:
            name = spelled[key]
        else:
            errors[f"{section}.{key}"] = f"unknown field; allowed: {allowed_names(section)}"
            continue
        if name in given_as:
            errors[f"{section}.{name}"] = (f"given twice, as {section}.{given_as[name]} and {section}.{key}: "
                                           "give one of them")
            continue
        given_as[name] = key
        out[name] = value
    for key, targets in derived.items():
        clash = [t for t in targets if t in out]
        if key in out and clash:
            errors[f"{section}.{key}"] = (f"{section}.{key} and {section}.{clash[0]} set the same thing: give one of "
                                          "them")
    if section == "training_config" and out.get("warmup_ratio") is not None and out.get("warmup_steps") is not None:
        errors[f"{section}.warmup_steps"] = (f"{section}.warmup_steps and {section}.warmup_ratio both set the warmup: "
                                             "give one of them")
    if own and errors:
        raise ConfigError(errors)
    if spelled_as is not None:
        spelled_as.update({f"{section}.{name}": f"{section}.{key}" for name, key in given_as.items() if name != key})
    return out


def _value(spec: dict[str, Any], path: str, value: Any, errors: dict[str, str]) -> Any:
    kind = spec["kind"]
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind == "modules":
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        errors[path] = "must be a non-empty list of module names or 'all-linear'"
    elif kind == "bool":
        if isinstance(value, bool):
            return value
        errors[path] = f"must be true or false, got {value!r}"
    elif kind == "int":
        if not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
        errors[path] = f"must be an integer, got {value!r}"
    elif kind == "float":
        if not isinstance(value, bool) and isinstance(value, (int, float)):
            return value
        errors[path] = f"must be a number, got {value!r}"
    elif isinstance(value, str):
        if spec["choices"] and value not in spec["choices"]:
            errors[path] = f"must be one of {', '.join(spec['choices'])}, got {value!r}"
        return value
    else:
        errors[path] = f"must be a string, got {value!r}"
    return spec["default"]


def _coerce(section: str, raw: Any, errors: dict[str, str], spelled_as: dict[str, str]) -> Any:
    given = canonical_section(section, raw, errors, spelled_as)
    specs = {s["name"]: s for s in field_specs(section)}
    values: dict[str, Any] = {}
    for name, value in given.items():
        path = spelled_as.get(f"{section}.{name}", f"{section}.{name}")  # type errors name the key as given
        if name == "precision":
            if value not in PRECISION_FLAGS:
                errors[path] = f"must be one of {', '.join(PRECISION_FLAGS)}, got {value!r}"
            else:
                values["fp16"], values["bf16"] = PRECISION_FLAGS[value]
            continue
        values[name] = _value(specs[name], path, value, errors)
    if section == "training_config":
        if values.get("max_steps") == -1:  # the earlier API's "train for num_epochs"
            values["max_steps"] = None
        if values.get("warmup_ratio") is not None and "warmup_steps" not in values:
            values["warmup_steps"] = None
    return SECTION_CLASSES[section](**values)


def _check(errors: dict[str, str], path: str, ok: bool, message: str) -> None:
    if not ok and path not in errors:
        errors[path] = message


def parse_job_config(lora: Any = None, training: Any = None, qlora: Any = None) -> JobConfig:
    errors: dict[str, str] = {}
    spelled_as: dict[str, str] = {}
    lc = _coerce("lora_config", lora, errors, spelled_as)
    tc = _coerce("training_config", training, errors, spelled_as)
    qc = _coerce("qlora_config", qlora, errors, spelled_as)

    _check(errors, "lora_config.rank", 1 <= lc.rank <= 1024, "must be between 1 and 1024")
    _check(errors, "lora_config.alpha", 1 <= lc.alpha <= 4096, "must be between 1 and 4096")
    _check(errors, "lora_config.dropout", 0.0 <= lc.dropout < 1.0, "must be in [0, 1)")
    if isinstance(lc.target_modules, str):
        _check(errors, "lora_config.target_modules", lc.target_modules == "all-linear", "a string value must be 'all-linear'")

    _check(errors, "training_config.num_epochs", 0 < tc.num_epochs <= 100, "must be greater than 0 and at most 100")
    _check(errors, "training_config.max_steps", tc.max_steps is None or 1 <= tc.max_steps <= 1_000_000,
           "must be null (train for num_epochs) or between 1 and 1000000")
    _check(errors, "training_config.batch_size", 1 <= tc.batch_size <= 1024, "must be between 1 and 1024")
    _check(errors, "training_config.gradient_accumulation_steps", 1 <= tc.gradient_accumulation_steps <= 1024, "must be between 1 and 1024")
    _check(errors, "training_config.learning_rate", 0 < tc.learning_rate <= 1.0, "must be greater than 0 and at most 1")
    _check(errors, "training_config.max_seq_length", 16 <= tc.max_seq_length <= 131072, "must be between 16 and 131072")
    _check(errors, "training_config.warmup_steps", tc.warmup_steps is None or 0 <= tc.warmup_steps <= 1_000_000,
           "must be between 0 and 1000000")
    _check(errors, "training_config.warmup_ratio", tc.warmup_ratio is None or 0 <= tc.warmup_ratio < 1, "must be in [0, 1)")
    _check(errors, "training_config.weight_decay", 0 <= tc.weight_decay <= 1, "must be in [0, 1]")
    _check(errors, "training_config.fp16", not (tc.fp16 and tc.bf16),
           "training_config.fp16 and training_config.bf16 are both true: choose one (or neither, for float32)")
    _check(errors, "training_config.max_grad_norm", tc.max_grad_norm > 0, "must be greater than 0")
    _check(errors, "training_config.logging_steps", tc.logging_steps >= 1, "must be at least 1")
    _check(errors, "training_config.save_steps", tc.save_steps >= 0, "must be 0 (automatic) or a positive number of steps")
    _check(errors, "training_config.save_total_limit", 1 <= tc.save_total_limit <= 100, "must be between 1 and 100")
    _check(errors, "training_config.validation_split", 0 <= tc.validation_split <= 0.5, "must be in [0, 0.5]")
    _check(errors, "training_config.eval_steps", tc.eval_steps >= 0, "must be 0 (at every checkpoint) or a positive number of steps")
    _check(errors, "training_config.early_stopping_patience", 0 <= tc.early_stopping_patience <= 1000,
           "must be 0 (off) or a number of evaluations up to 1000")
    _check(errors, "training_config.early_stopping_threshold", tc.early_stopping_threshold >= 0, "must be 0 or more")
    if tc.save_steps and tc.eval_steps and tc.load_best_model_at_end:
        _check(errors, "training_config.save_steps", tc.save_steps % tc.eval_steps == 0,
               f"must be a multiple of eval_steps ({tc.eval_steps}) so that the best evaluated step has a checkpoint "
               "(or set load_best_model_at_end to false)")
    _check(errors, "training_config.num_gpus", 1 <= tc.num_gpus <= MAX_GPUS, f"must be between 1 and {MAX_GPUS}")
    _check(errors, "qlora_config.bits", qc.bits == 4, "only 4-bit quantization is supported")
    if errors:
        # a range error on a field given under an alias says so (`lora_config.rank: ... (given as lora_config.r)`)
        raise ConfigError({path: (f"{message} (given as {spelled_as[path]})"
                                  if path in spelled_as and spelled_as[path] not in message else message)
                           for path, message in errors.items()})
    return JobConfig(lora=lc, training=tc, qlora=qc)


def total_steps_for(config: JobConfig, num_examples: int) -> int:
    """Optimizer steps of a run over `num_examples` training examples."""
    tc = config.training
    if tc.max_steps:
        return tc.max_steps
    return max(1, math.ceil(steps_per_epoch(tc, num_examples) * tc.num_epochs))


def global_batch(tc: TrainingConfig) -> int:
    """Examples per optimizer step: batch_size on each of num_gpus processes, gradient_accumulation_steps times."""
    return tc.batch_size * tc.gradient_accumulation_steps * tc.num_gpus


def steps_per_epoch(tc: TrainingConfig, num_examples: int) -> int:
    return max(1, math.ceil(num_examples / global_batch(tc)))


def warmup_steps_for(config: JobConfig, total_steps: int) -> int:
    tc = config.training
    if tc.warmup_ratio is not None:
        return int(round(tc.warmup_ratio * total_steps))
    return tc.warmup_steps or 0


def merge_sections(section: str, base: Any, override: Any) -> dict[str, Any]:
    """A preset's section with the caller's fields on top, both in the design's spelling. A caller's
    field replaces every spelling of the same setting in the preset (precision replaces fp16/bf16,
    warmup_ratio replaces warmup_steps and the other way round)."""
    base, override = canonical_section(section, base), canonical_section(section, override)
    merged = dict(base)
    for key in override:
        for derived, targets in _DERIVED.get(section, {}).items():
            if key == derived:
                for t in targets:
                    merged.pop(t, None)
            elif key in targets:
                merged.pop(derived, None)
        if section == "training_config" and key in ("warmup_steps", "warmup_ratio"):
            merged.pop("warmup_ratio" if key == "warmup_steps" else "warmup_steps", None)
    return {**merged, **override}


def given_fields(section: str, raw: Any) -> set[str]:
    """The fields of a section that the caller set (under any spelling; precision sets fp16 and bf16)."""
    given = set(canonical_section(section, raw))
    for derived, targets in _DERIVED.get(section, {}).items():
        if derived in given:
            given |= set(targets)
    return given
