"""GGUF export for llama.cpp: Hugging Face safetensors models and PEFT LoRA adapters to GGUF,
quantization through llama.cpp itself, and verification. Django-free.

Supported architectures are the ones whose tensor layout is written out below (the Llama family
and Qwen2); anything else is refused before any work starts. The tokenizer and chat template are
copied from the base model's own GGUF when there is one (so llama.cpp tokenizes exactly as it does
for the base), else built from the HF tokenizer files.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nexus import modelfiles

Progress = Callable[[float, str], None]

# HF architecture -> GGUF architecture. Mistral and SmolLM2 are Llama in llama.cpp.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
}
QUANTIZATIONS = ("f16", "q8_0", "q4_k_m")

# HF module (inside model.layers.N.) -> GGUF tensor (inside blk.N.)
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


class UnsupportedModel(ValueError):
    """The model or adapter cannot be exported (said before any work starts)."""


@dataclass(frozen=True)
class HParams:
    arch: str
    hf_arch: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    tied_embeddings: bool
    rope_scaling: dict | None

    @classmethod
    def from_config(cls, config: dict) -> HParams:
        hf_arch = (config.get("architectures") or ["?"])[0]
        arch = ARCHITECTURES.get(hf_arch)
        if arch is None:
            raise UnsupportedModel(
                f"GGUF export of {hf_arch} is not supported yet; supported: {', '.join(sorted(ARCHITECTURES))}")
        # transformers 5 writes `rope_parameters` ({rope_theta, rope_type, ...}); older configs
        # `rope_theta` and `rope_scaling`
        rope = config.get("rope_parameters") or {}
        scaling = config.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling and (scaling.get("rope_type") or scaling.get("type")) not in ("llama3", "linear", "default", None):
            raise UnsupportedModel(f"GGUF export with rope_scaling {scaling} is not supported yet")
        if config.get("sliding_window") and config.get("use_sliding_window"):
            raise UnsupportedModel("GGUF export of sliding-window attention is not supported yet")
        n_head = int(config["num_attention_heads"])
        n_embd = int(config["hidden_size"])
        return cls(
            arch=arch, hf_arch=hf_arch, n_layer=int(config["num_hidden_layers"]), n_embd=n_embd,
            n_ff=int(config["intermediate_size"]), n_head=n_head,
            n_head_kv=int(config.get("num_key_value_heads") or n_head),
            head_dim=int(config.get("head_dim") or n_embd // n_head),
            context_length=modelfiles.context_length(config) or 2048,
            rope_theta=float(config.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            rms_eps=float(config.get("rms_norm_eps") or 1e-6), vocab_size=int(config["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)), rope_scaling=scaling,
        )

    @classmethod
    def from_folder(cls, folder: Path) -> HParams:
        if not (folder / "config.json").is_file():
            raise UnsupportedModel(f"{folder} has no config.json")
        return cls.from_config(modelfiles.hf_config(folder))


def gguf_tensor_name(hf_name: str) -> str | None:
    """The llama.cpp tensor name of an HF parameter (None for ones llama.cpp does not use)."""
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    m = _LAYER_RE.match(hf_name)
    if m:
        block, module, kind = m.groups()
        target = _LAYER_TENSORS.get(module)
        if target is None:
            raise UnsupportedModel(f"tensor {hf_name} has no llama.cpp equivalent")
        return f"blk.{block}.{target}.{kind}"
    module, _, kind = hf_name.rpartition(".")
    target = _GLOBAL_TENSORS.get(module)
    if target is None:
        raise UnsupportedModel(f"tensor {hf_name} has no llama.cpp equivalent")
    return f"{target}.{kind}"


def _permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores Llama's q/k rows in the rotate-half order; llama.cpp's Llama uses interleaved
    pairs. Reorder the output rows (also of a LoRA B matrix or a bias) head by head."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _to_llama_layout(hp: HParams, gguf_name: str, array: np.ndarray) -> np.ndarray:
    if hp.arch != "llama":
        return array
    if ".attn_q." in gguf_name:
        return _permute_rows(array, hp.n_head)
    if ".attn_k." in gguf_name:
        return _permute_rows(array, hp.n_head_kv)
    return array


def _add_hparams(writer, hp: HParams, name: str) -> None:
    writer.add_name(name)
    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.n_embd)
    writer.add_block_count(hp.n_layer)
    writer.add_feed_forward_length(hp.n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.n_head_kv)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_rope_dimension_count(hp.head_dim)
    writer.add_vocab_size(hp.vocab_size)
    if hp.head_dim != hp.n_embd // hp.n_head:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    scaling = hp.rope_scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


def _llama3_rope_freqs(hp: HParams) -> np.ndarray | None:
    """Llama 3.1+ long-context rope: llama.cpp reads the per-dimension factors from a tensor."""
    scaling = hp.rope_scaling or {}
    if (scaling.get("rope_type") or scaling.get("type")) != "llama3":
        return None
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (hp.rope_theta ** (np.arange(0, hp.head_dim, 2, dtype=np.float64) / hp.head_dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


# --- tokenizer metadata ------------------------------------------------------------------------

def _copy_tokenizer_from_gguf(writer, gguf_path: Path) -> None:
    """Every tokenizer.* key of the base model's GGUF, as it is (so tokenization is identical)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            values = [modelfiles.gguf_value(field, i, sub) for i in field.data]
            writer.add_key_value(key, values, vtype, sub_type=sub)
        else:
            writer.add_key_value(key, modelfiles.gguf_value(field, field.data[0], vtype), vtype)


_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bpe_pre_tokenizer(tokenizer_json: dict) -> str:
    """llama.cpp's name for a BPE tokenizer's pre-tokenization (it must match, or text splits differently)."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    regexes = [(s.get("pattern") or {}).get("Regex") for s in steps if s.get("type") == "Split"]
    if regexes and regexes[0] == _LLAMA3_REGEX:
        return "llama-bpe"
    if regexes and regexes[0] == _QWEN2_REGEX:
        return "qwen2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    raise UnsupportedModel(f"this tokenizer's pre-tokenization ({kinds}) is not supported yet; register the base "
                           "model with its GGUF file so the tokenizer can be copied from it")


def _hf_tokenizer(folder: Path) -> tuple[str, dict | None, str]:
    """(llama.cpp tokenizer model, tokenizer.json or None, pre-tokenizer) of an HF folder's tokenizer;
    UnsupportedModel for one this module cannot write."""
    if (folder / "tokenizer.model").is_file():
        return "llama", None, "default"  # SentencePiece
    if not (folder / "tokenizer.json").is_file():
        raise UnsupportedModel(f"{folder} has neither tokenizer.json nor tokenizer.model")
    tj = json.loads((folder / "tokenizer.json").read_text())
    if (tj.get("model") or {}).get("type") != "BPE":
        raise UnsupportedModel(f"tokenizer type {(tj.get('model') or {}).get('type')} is not supported yet")
    return "gpt2", tj, bpe_pre_tokenizer(tj)


def check_model_exportable(folder: Path, *, base_gguf: Path | None = None) -> HParams:
    """Raise UnsupportedModel for an architecture or tokenizer this module cannot write."""
    hp = HParams.from_folder(Path(folder))
    if base_gguf is None or not Path(base_gguf).is_file():
        _hf_tokenizer(Path(folder))
    return hp


def _add_tokenizer_from_hf(writer, folder: Path, vocab_size: int) -> None:
    import gguf

    model, tj, pre = _hf_tokenizer(folder)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=vocab_size)
    if tj is None:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        tokens, scores, types = [], [], []
        for i in range(sp.vocab_size()):
            tokens.append(sp.id_to_piece(i).encode("utf-8"))
            scores.append(sp.get_score(i))
            types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                         else 6 if sp.is_byte(i) else 1)
        added = folder / "added_tokens.json"
        for piece, idx in sorted(json.loads(added.read_text()).items() if added.is_file() else [], key=lambda x: x[1]):
            if idx == len(tokens):
                tokens.append(piece.encode("utf-8"))
                scores.append(-1000.0)
                types.append(4)
        while len(tokens) < vocab_size:
            tokens.append(f"[PAD{len(tokens)}]".encode())
            scores.append(-1000.0)
            types.append(5)
        writer.add_token_scores(scores)
    else:
        vocab = dict(tj["model"]["vocab"])
        added = {t["content"]: t for t in tj.get("added_tokens", [])}
        for content, t in added.items():
            vocab[content] = t["id"]
        by_id = {i: tok for tok, i in vocab.items()}
        tokens, types = [], []
        for i in range(vocab_size):
            tok = by_id.get(i)
            if tok is None:
                tokens.append(f"[PAD{i}]")
                types.append(5)
            elif tok in added:
                tokens.append(tok)
                types.append(3 if added[tok].get("special") else 4)
            else:
                tokens.append(tok)
                types.append(1)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    template = folder / "chat_template.jinja"
    if template.is_file() and not special.chat_template:
        special.chat_template = template.read_text()
    special.add_to_gguf(writer)


def _add_tokenizer(writer, hf_folder: Path, base_gguf: Path | None, vocab_size: int) -> None:
    if base_gguf is not None and Path(base_gguf).is_file():
        _copy_tokenizer_from_gguf(writer, Path(base_gguf))
    else:
        _add_tokenizer_from_hf(writer, hf_folder, vocab_size)


# --- model and adapter writers -----------------------------------------------------------------

def _safetensors_plan(folder: Path, hp: HParams, dtype: str) -> list[tuple[str, str, Path, tuple, "np.dtype"]]:
    """(gguf name, HF name, file, shape, output dtype) of every tensor llama.cpp uses, in file order."""
    if not any(folder.glob("*.safetensors")):
        raise UnsupportedModel(f"{folder} holds no .safetensors weights")
    plan = []
    for file, key, shape in modelfiles.safetensors_tensors(folder):
        target = gguf_tensor_name(key)
        if target is None or (target == "output.weight" and hp.tied_embeddings):
            continue
        out = np.dtype(np.float16 if len(shape) == 2 and dtype == "f16" else np.float32)
        plan.append((target, key, file, shape, out))
    expected = 2 + 9 * hp.n_layer
    if len([p for p in plan if p[0].endswith(".weight")]) < expected:
        raise UnsupportedModel(f"{folder} has {len(plan)} usable tensors, fewer than the {expected} a "
                               f"{hp.hf_arch} with {hp.n_layer} layers needs")
    return plan


def write_model_gguf(model_dir: Path, out_path: Path, *, name: str, base_gguf: Path | None = None,
                     progress: Progress | None = None, dtype: str = "f16") -> Path:
    """An f16 (or f32) GGUF of a Hugging Face model folder (norms and biases always f32).

    Tensors stream from the safetensors files to the GGUF one at a time, so memory stays at about
    one tensor whatever the model's size (the plan is read from the headers first)."""
    import gguf
    import torch
    from safetensors import safe_open

    model_dir, out_path = Path(model_dir), Path(out_path)
    hp = HParams.from_folder(model_dir)
    if dtype not in ("f16", "f32"):
        raise UnsupportedModel(f"unquantized GGUF dtype must be f16 or f32, not {dtype!r}")
    progress = progress or (lambda _f, _m: None)
    plan = _safetensors_plan(model_dir, hp, dtype)
    writer = gguf.GGUFWriter(str(out_path), hp.arch)
    _add_hparams(writer, hp, name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, model_dir, base_gguf, hp.vocab_size)
    freqs = _llama3_rope_freqs(hp)
    if freqs is not None:
        writer.add_tensor_info("rope_freqs.weight", freqs.shape, freqs.dtype, freqs.nbytes)
    for target, _key, _file, shape, out in plan:
        writer.add_tensor_info(target, shape, out, int(np.prod(shape)) * out.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if freqs is not None:
        writer.write_tensor_data(freqs)
    handles: dict[Path, object] = {}
    try:
        for i, (target, key, file, _shape, out) in enumerate(plan):
            if file not in handles:
                handles[file] = safe_open(str(file), framework="pt")
            tensor = handles[file].get_tensor(key).to(torch.float32).numpy()
            writer.write_tensor_data(_to_llama_layout(hp, target, tensor).astype(out))
            if i % 16 == 0 or i == len(plan) - 1:
                progress((i + 1) / len(plan), f"writing GGUF tensors ({i + 1}/{len(plan)})")
    finally:
        handles.clear()
        writer.close()
    return out_path


def adapter_lora_scale_alpha(adapter_config: dict) -> float:
    """The alpha llama.cpp needs: it scales by alpha / r, which rsLoRA replaces with alpha / sqrt(r)."""
    r = int(adapter_config["r"])
    alpha = float(adapter_config.get("lora_alpha") or r)
    return alpha * math.sqrt(r) if adapter_config.get("use_rslora") else alpha


def check_adapter_exportable(adapter_config: dict) -> None:
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedModel(f"{adapter_config.get('peft_type')} adapters cannot be exported to GGUF")
    if adapter_config.get("use_dora"):
        raise UnsupportedModel("DoRA adapters cannot be exported to a llama.cpp adapter GGUF; export a merged model")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise UnsupportedModel("adapters with per-module ranks or alphas cannot be exported to one llama.cpp "
                               "adapter GGUF; export a merged model")
    if adapter_config.get("modules_to_save"):
        raise UnsupportedModel("adapters that also train whole modules (modules_to_save) cannot be exported to a "
                               "llama.cpp adapter GGUF; export a merged model")


def write_adapter_gguf(adapter_dir: Path, base_config: dict, out_path: Path, *, name: str,
                       progress: Progress | None = None) -> Path:
    """A PEFT LoRA adapter as llama.cpp's adapter GGUF (`--lora`): lora_a [r, in] and lora_b [out, r]
    per base matrix, alpha in the metadata, q/k B matrices in llama.cpp's row order."""
    import gguf
    import torch
    from safetensors import safe_open

    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    hp = HParams.from_config(base_config)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    check_adapter_exportable(config)
    progress = progress or (lambda _f, _m: None)
    writer = gguf.GGUFWriter(str(out_path), hp.arch)
    writer.add_string("general.type", "adapter")
    writer.add_name(name)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", adapter_lora_scale_alpha(config))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():
            m = re.match(r"^(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?\.weight$", key)
            if m is None:
                raise UnsupportedModel(f"adapter tensor {key} is not a LoRA A/B matrix; cannot export it")
            base_name, which = m.group(1) + ".weight", m.group(2)
            target = gguf_tensor_name(base_name)
            if target is None or target.startswith("token_embd"):
                raise UnsupportedModel(f"LoRA on {base_name} cannot be exported to a llama.cpp adapter GGUF")
            pairs.setdefault(target, {})[which] = f.get_tensor(key).to(torch.float32).numpy()
    if not pairs:
        raise UnsupportedModel(f"{adapter_dir} holds no LoRA weights")
    for target, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise UnsupportedModel(f"LoRA for {target} lacks its {'A' if 'A' not in ab else 'B'} matrix")
        stem = target[: -len(".weight")]
        writer.add_tensor(f"{stem}.weight.lora_a", ab["A"])
        writer.add_tensor(f"{stem}.weight.lora_b", _to_llama_layout(hp, target, ab["B"]))
    progress(0.5, f"writing {len(pairs)} LoRA matrix pairs")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


# --- quantization through llama.cpp ------------------------------------------------------------

def quantize(src: Path, dst: Path, quantization: str, *, threads: int | None = None) -> Path:
    """Quantize an f16 GGUF with llama.cpp's own `llama_model_quantize`."""
    import ctypes
    import os

    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
              "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}
    if quantization not in ftypes:
        raise UnsupportedModel(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quantization]
    params.nthread = threads or max(1, os.cpu_count() or 1)
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not Path(dst).is_file():
        raise RuntimeError(f"llama.cpp could not quantize {Path(src).name} to {quantization} (status {status})")
    return Path(dst)


def read_metadata(path: Path) -> dict:
    """A few GGUF header fields, for checks and display."""
    info = modelfiles.read_gguf(path)
    out = {key: info.fields[key] for key in (
        "general.architecture", "general.type", "general.name", "general.file_type", "adapter.type", "adapter.lora.alpha",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template") if key in info.fields}
    out["tensor_count"] = info.tensor_count
    out["tensor_types"] = info.tensor_types
    return out
