"""What a local HF model folder says about itself: linear module names, dimensions, and the
LoRA target modules that fit its architecture. Reads config.json and safetensors headers only
(no weights are loaded), through nexus.modelfiles. Django-free."""
from __future__ import annotations

import functools
from dataclasses import dataclass

from nexus.modelfiles import context_length, first_layer_linears, hf_config

# Appendix C's target modules per architecture family (attention and MLP), in each model's own
# module names: Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj; Phi-2 calls the
# output projection `dense` and the MLP fc1/fc2; the first Qwen c_attn/c_proj/w1/w2.
_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARCH_DEFAULTS = {
    "llama": _SEVEN, "mistral": _SEVEN, "qwen2": _SEVEN, "qwen3": _SEVEN, "gemma": _SEVEN, "gemma2": _SEVEN,
    "gemma3_text": _SEVEN,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "qwen": ["c_attn", "c_proj", "w1", "w2"],
}
NOT_LORA = {"lm_head", "embed_tokens", "wte", "wpe"}


@dataclass(frozen=True)
class ModelInfo:
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    tie_word_embeddings: bool
    linear_modules: tuple[str, ...]
    module_shapes: tuple[tuple[str, int, int], ...]  # (name, in_features, out_features) per layer

    @property
    def head_dim(self) -> int:
        return self.hidden_size // max(self.num_heads, 1)

    def default_targets(self) -> list[str]:
        wanted = ARCH_DEFAULTS.get(self.model_type, _SEVEN)
        present = [m for m in wanted if m in self.linear_modules]
        return present or [m for m in self.linear_modules if m not in NOT_LORA][:4]

    def resolve_targets(self, targets: list[str] | str) -> list[str]:
        if targets == "all-linear":
            return [m for m in self.linear_modules if m not in NOT_LORA]
        return list(targets)


@functools.lru_cache(maxsize=16)
def model_info(folder: str) -> ModelInfo:
    config = hf_config(folder)
    shapes = first_layer_linears(folder)
    heads = int(config.get("num_attention_heads") or 1)
    return ModelInfo(
        model_type=str(config.get("model_type", "")),
        num_layers=int(config.get("num_hidden_layers") or 0),
        hidden_size=int(config.get("hidden_size") or 0),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        intermediate_size=int(config.get("intermediate_size") or 0),
        vocab_size=int(config.get("vocab_size") or 0),
        context_length=context_length(config),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        linear_modules=tuple(sorted(shapes)),
        module_shapes=tuple((name, i, o) for name, (i, o) in sorted(shapes.items())),
    )
