"""Memory and time estimates for a fine-tuning job, from the model's real config. Django-free.

Memory (bytes) is the sum of: base weights at the quantization's bits, LoRA parameters with
their gradients and AdamW states (4 + 4 + 8 bytes each, or 4 + 4 + 2 with an 8-bit optimizer),
activations for the batch and sequence length (only the layer inputs with gradient checkpointing;
for the architectures engine/lean.py makes lean, the tensors its layers keep for backward, counted
from the module shapes; for others Korthikanti et al.: s*b*h*(34 + 5*a*s/h) bytes per layer at
16-bit, and with LoRA dropout each adapted module's dropped-out input and its mask), the loss (engine/loss.py forms the logits at
supervised positions a chunk of rows at a time: one chunk's fp32 logits, their softmax and their
gradient, plus the hidden states with their gradient; a model the chunked loss does not apply to
holds those three vocabulary-wide tensors for every position of the batch instead), and a fixed
runtime overhead (the CUDA context, or on the CPU the process with torch and
transformers loaded: about 0.5 GiB resident measured here), and on a CPU the allocator's slack
(glibc's heap holding freed blocks: about the activations again, measured)."""
from __future__ import annotations

from typing import Any

from training_app.engine.config import JobConfig, TrainingConfig, global_batch
from training_app.engine.lean import GATED_MLP_TYPES
from training_app.engine.loss import CHUNKED_MODEL_TYPES, chunk_rows
from training_app.engine.modelinfo import ModelInfo

GIB = 1024**3
RUNTIME_OVERHEAD = {"cuda": int(0.6 * GIB), "cpu": int(0.6 * GIB)}
CPU_HEAP_SLACK = 1.0  # x activations: bench/training_memory.py, lean LoRA 0.92, QLoRA 1.13-1.43


def lora_parameter_count(info: ModelInfo, targets: list[str], rank: int) -> int:
    dims = {name: (i, o) for name, i, o in info.module_shapes}
    return info.num_layers * sum(rank * (dims[t][0] + dims[t][1]) for t in targets if t in dims)


def lean_layer_bytes_per_token(info: ModelInfo, targets: list[str], rank: int, dropout: float, compute_bytes: int) -> int:
    """What one layer of a lean model (engine/lean.py) keeps for backward per token: each norm's
    input, the rotated query and key, the value, the attention's output and the copy o_proj reads,
    the MLP's gate and up; for LoRA the input of the adapted modules where no other op keeps it
    (the normed hidden state before q/k/v and before gate/up, the MLP product before down), each
    module's rank-wide intermediate and, with dropout, its boolean mask."""
    dims = {name: (i, o) for name, i, o in info.module_shapes}
    h = info.hidden_size
    q, k, v = (dims.get(n, (h, h))[1] for n in ("q_proj", "k_proj", "v_proj"))
    inter = dims.get("gate_proj", (h, info.intermediate_size))[1]
    values = 2 * h + q + k + v + 2 * q + 2 * inter
    adapted = [t for t in targets if t in dims]
    values += h * any(t in adapted for t in ("q_proj", "k_proj", "v_proj")) + h * any(t in adapted for t in ("gate_proj", "up_proj"))
    values += inter * ("down_proj" in adapted) + rank * len(adapted)
    masks = sum(dims[t][0] for t in adapted) if dropout > 0 else 0
    return values * compute_bytes + masks


def estimate_memory(info: ModelInfo, parameter_count: int, config: JobConfig, *, device: str = "cuda") -> dict[str, Any]:
    tc, qc = config.training, config.qlora
    targets = info.resolve_targets(config.lora.target_modules)
    # a CPU trains in float32 whatever is asked (the job says so); a GPU in bf16/fp16 when asked
    compute_bytes = 4 if device == "cpu" or not (tc.bf16 or tc.fp16) else 2
    embed = info.vocab_size * info.hidden_size * (1 if info.tie_word_embeddings else 2)
    layer_linear = info.num_layers * sum(i * o for _, i, o in info.module_shapes)
    other = max(parameter_count - embed - layer_linear, 0)  # norms and biases
    if qc.enabled:
        # NF4: 4 bits per weight plus block scales (64-weight blocks; double quantization
        # stores the scales in 8 bits with a second-level fp32 scale per 256 blocks)
        bits = 4 + (8 / 64 + 32 / (64 * 256) if qc.double_quant else 32 / 64)
        weights = layer_linear * bits / 8 + (embed + other) * (2 if device != "cpu" else 4)
    else:
        weights = parameter_count * compute_bytes
    lora_params = lora_parameter_count(info, targets, config.lora.rank)
    # fp32 weights and gradients, and AdamW's two moments: fp32, or 8-bit (bitsandbytes) for the 8-bit optimizers
    lora = lora_params * (4 + 4 + (2 if tc.optimizer in ("adamw_8bit", "paged_adamw_8bit") else 8))
    s, b, h, a = tc.max_seq_length, tc.batch_size, info.hidden_size, info.num_heads
    lean = info.model_type in GATED_MLP_TYPES
    if lean:  # what a lean layer (engine/lean.py) keeps: linear in the tokens, no attention scores
        per_layer = s * b * lean_layer_bytes_per_token(info, targets, config.lora.rank, config.lora.dropout, compute_bytes)
    else:
        per_layer = s * b * h * (34 + 5 * a * s / h) * compute_bytes / 2
    if tc.gradient_checkpointing:  # every layer's input, and one layer's tensors while it is recomputed
        activations = info.num_layers * s * b * h * compute_bytes + per_layer
    else:
        activations = info.num_layers * per_layer
    if config.lora.dropout > 0 and not lean:
        # LoRA's dropout makes each adapted module's input anew (kept for lora_A's backward) with its
        # boolean mask; without dropout lora_A keeps the input the layer already holds
        inputs = {name: i for name, i, _ in info.module_shapes}
        layers = 1 if tc.gradient_checkpointing else info.num_layers  # checkpointed: the layer being recomputed
        activations += layers * s * b * sum(inputs.get(t, 0) for t in targets) * (compute_bytes + 1)
    if info.model_type in CHUNKED_MODEL_TYPES:
        logits = 3 * min(chunk_rows(info.vocab_size), b * s) * info.vocab_size * 4 + 2 * b * s * h * compute_bytes
    else:
        logits = 3 * b * s * info.vocab_size * 4
    overhead = RUNTIME_OVERHEAD.get(device, RUNTIME_OVERHEAD["cuda"])
    # on a CPU glibc's heap keeps the freed blocks of a step's tensors resident (its dynamic mmap
    # threshold puts them on the heap, whose holes the next sizes do not fit): measured here about
    # as much again as the activations (docs/architecture.md, "Memory per token in training")
    slack = activations * CPU_HEAP_SLACK if device == "cpu" else 0
    parts = {"weights": weights, "lora_parameters_gradients_optimizer": lora, "activations": activations,
             "logits": logits, "runtime_overhead": overhead, "allocator_slack": slack}
    total = sum(parts.values())
    return {
        "device": device,
        "total_bytes": int(total),
        "total_gib": round(total / GIB, 2),
        "breakdown_bytes": {k: int(v) for k, v in parts.items()},
        "lora_parameters": lora_params,
        "target_modules": targets,
        "quantization": f"nf4{' double-quant' if qc.double_quant else ''}" if qc.enabled else
        ("fp32" if compute_bytes == 4 else "bf16" if tc.bf16 else "fp16"),
    }


def estimate_time(*, total_tokens: int, num_examples: int, num_usable: int, template_tokens: int,
                  training: TrainingConfig, tokens_per_second: float | None) -> dict[str, Any]:
    """Time to train on a dataset at the throughput measured here. An example is its content plus
    the chat template's tokens, cut at max_seq_length as the trainer cuts it; the dataset's mean
    example stands for each (the dataset keeps token totals, not every record's length). On
    num_gpus GPUs a step takes num_gpus times the examples, and the measured throughput is taken
    to scale with num_gpus (data parallel; an upper bound on the speed-up)."""
    if not tokens_per_second:
        return {"available": False, "reason": "no throughput measured on this deployment for this model yet"}
    per_example = min(total_tokens / max(num_examples, 1) + template_tokens, training.max_seq_length)
    if training.max_steps:
        tokens = int(per_example * global_batch(training)) * training.max_steps
    else:
        tokens = int(per_example * num_usable) * training.num_epochs
    tokens_per_second *= training.num_gpus
    return {"available": True, "tokens": int(tokens), "tokens_per_second": round(tokens_per_second, 1),
            "num_gpus": training.num_gpus, "seconds": round(tokens / tokens_per_second)}
