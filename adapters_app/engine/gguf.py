"""GGUF export for llama.cpp. Django-free.

The conversion itself is llama.cpp's own (`engine.converters`: `convert_hf_to_gguf.py` and
`convert_lora_to_gguf.py` of the llama.cpp the installed llama-cpp-python was built from), so
every architecture that llama.cpp converts can be exported. This module adds what the converters
do not do for us: refusal before any work (an architecture the converter does not know, DoRA,
per-module ranks, `modules_to_save`, LoRA on the embeddings), the comparison of the exported
tokenizer with the base model's own GGUF, quantization below 8 bits through llama.cpp's
`llama_model_quantize`, and reading a GGUF's header for display and checks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from adapters_app.engine import converters
from nexus import modelfiles

Progress = Callable[[float, str], None]
QUANTIZATIONS = ("f32", "f16", "q8_0", "q4_k_m")
CONVERTER_TYPES = ("f32", "f16", "q8_0")  # written by the converter itself; q4_k_m quantized from f16
EMBEDDING_MODULES = {"embed_tokens", "wte", "tok_embeddings", "word_embeddings", "lm_head", "embed_out"}
TOKENIZER_PROBES = ["The capital of France is Paris.", "def add(a, b):\n    return a + b  # 42",
                    "  Ünïcödé ✓ and 12345 digits", "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n"]


class UnsupportedModel(ValueError):
    """The model or adapter cannot be exported (said before any work starts)."""


def _architecture(config: dict) -> str:
    return (config.get("architectures") or ["?"])[0]


def check_model_exportable(folder: Path) -> str:
    """The model's HF architecture; UnsupportedModel when llama.cpp's converter of this installation
    does not know it, or the folder lacks what the converter reads (config, tokenizer)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UnsupportedModel(f"{folder} has no config.json")
    arch = _architecture(modelfiles.hf_config(folder))
    known = converters.supported_architectures()
    if arch not in known:
        raise UnsupportedModel(f"GGUF export of {arch} is not supported by the llama.cpp of llama-cpp-python "
                               f"{converters.llama_cpp_version()} ({len(known)} architectures are)")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise UnsupportedModel(f"{folder} has neither tokenizer.json nor tokenizer.model for the GGUF's vocabulary")
    return arch


def check_adapter_exportable(adapter_config: dict, tensor_names: list[str] | None = None) -> None:
    """Refuse, with the reason and the way out, adapters a llama.cpp adapter GGUF cannot hold."""
    if adapter_config.get("peft_type", "LORA") != "LORA":
        raise UnsupportedModel(f"{adapter_config.get('peft_type')} adapters cannot be exported to GGUF")
    if adapter_config.get("use_dora"):
        raise UnsupportedModel("DoRA adapters cannot be exported to a llama.cpp adapter GGUF (llama.cpp has no "
                               "weight-decomposed LoRA); export a merged model")
    if adapter_config.get("rank_pattern") or adapter_config.get("alpha_pattern"):
        raise UnsupportedModel("adapters with per-module ranks or alphas cannot be exported to one llama.cpp "
                               "adapter GGUF (it holds one alpha); export a merged model")
    if adapter_config.get("modules_to_save"):
        raise UnsupportedModel("adapters that also train whole modules (modules_to_save) cannot be exported to a "
                               "llama.cpp adapter GGUF (it holds LoRA matrices only); export a merged model")
    targets = adapter_config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    modules = {t.split(".")[-1] for t in targets} | {part for key in tensor_names or [] for part in key.split(".")}
    if any("lora_embedding_" in key for key in tensor_names or []):
        modules.add("embeddings")
    embedded = sorted(modules & (EMBEDDING_MODULES | {"embeddings"}))
    if embedded:
        raise UnsupportedModel(f"LoRA on the embeddings or output head ({', '.join(embedded)}) cannot be exported "
                               "to a llama.cpp adapter GGUF; export a merged model")


def adapter_tensor_names(adapter_dir: Path) -> list[str]:
    """The tensor names in an adapter's safetensors header (the weights are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="pt") as f:
            return list(f.keys())
    except SafetensorError as exc:
        raise UnsupportedModel(f"adapter_model.safetensors is not a readable safetensors file ({exc})") from None


def export_model(model_dir: Path, out_path: Path, quantization: str, *, name: str,
                 progress: Progress | None = None) -> Path:
    """A Hugging Face model folder to a GGUF of `quantization` (f32, f16, q8_0 by the converter;
    q4_k_m quantized from its f16 by llama.cpp)."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if quantization not in QUANTIZATIONS:
        raise UnsupportedModel(f"quantization {quantization!r} is not one of {', '.join(QUANTIZATIONS)}")
    check_model_exportable(model_dir)
    progress = progress or (lambda _f, _m: None)
    tensors = _tensor_count(model_dir)
    if quantization in CONVERTER_TYPES:
        return converters.convert_model(model_dir, out_path, outtype=quantization, name=name,
                                        expected_tensors=tensors, progress=progress)
    f16 = out_path.with_name(out_path.name + ".f16.partial")
    try:
        converters.convert_model(model_dir, f16, outtype="f16", name=name, expected_tensors=tensors,
                                 progress=lambda f, m: progress(0.8 * f, m))
        progress(0.8, f"quantizing to {quantization} with llama.cpp")
        return quantize(f16, out_path, quantization)
    finally:
        f16.unlink(missing_ok=True)


def _tensor_count(folder: Path) -> int:
    """How many tensors the converter will plan (for its progress); 0 for files it will refuse itself."""
    try:
        return len(modelfiles.safetensors_tensors(folder))
    except Exception:  # noqa: BLE001 - an unreadable file is the converter's to report, in its own words
        return 0


def export_adapter(adapter_dir: Path, base_dir: Path, out_path: Path, *, progress: Progress | None = None) -> Path:
    """A PEFT LoRA adapter to llama.cpp's adapter GGUF (f32), refused before work when it cannot be."""
    adapter_dir = Path(adapter_dir)
    names = adapter_tensor_names(adapter_dir)
    check_adapter_exportable(json.loads((adapter_dir / "adapter_config.json").read_text()), names)
    return converters.convert_lora(adapter_dir, Path(base_dir), Path(out_path), outtype="f32",
                                   expected_tensors=len(names), progress=progress)


# --- quantization through llama.cpp ------------------------------------------------------------

def quantize(src: Path, dst: Path, quantization: str, *, threads: int | None = None) -> Path:
    """Quantize an f16 GGUF with llama.cpp's own `llama_model_quantize`."""
    import ctypes
    import os

    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
              "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}
    if quantization not in ftypes:
        raise UnsupportedModel(f"llama.cpp quantization {quantization!r} is not one of {', '.join(ftypes)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quantization]
    params.nthread = threads or max(1, os.cpu_count() or 1)
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not Path(dst).is_file():
        raise RuntimeError(f"llama.cpp could not quantize {Path(src).name} to {quantization} (status {status})")
    return Path(dst)


# --- reading -------------------------------------------------------------------------------------

def read_metadata(path: Path) -> dict:
    """A few GGUF header fields, for checks and display."""
    info = modelfiles.read_gguf(path)
    out = {key: info.fields[key] for key in (
        "general.architecture", "general.type", "general.name", "general.file_type", "adapter.type", "adapter.lora.alpha",
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.chat_template") if key in info.fields}
    out["tensor_count"] = info.tensor_count
    out["tensor_types"] = info.tensor_types
    return out


def tokenizer_fields(path: Path) -> dict:
    """Every tokenizer.* key of a GGUF with its value (arrays as lists)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                out[key] = [modelfiles.gguf_value(field, i, field.types[1]) for i in field.data]
            else:
                out[key] = modelfiles.gguf_value(field, field.data[0], vtype)
    return out


def compare_tokenizer(exported: Path, base_gguf: Path) -> dict:
    """Whether an exported GGUF's tokenizer is the base model's GGUF's: every tokenizer key, and
    the tokens llama.cpp makes of a few probe texts (special tokens included) with each."""
    from llama_cpp import Llama

    ours, theirs = tokenizer_fields(exported), tokenizer_fields(base_gguf)
    differences = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    loaded = [Llama(model_path=str(p), vocab_only=True, verbose=False) for p in (exported, base_gguf)]
    try:
        differing = [text for text in TOKENIZER_PROBES
                     if loaded[0].tokenize(text.encode(), special=True) != loaded[1].tokenize(text.encode(), special=True)]
    finally:
        for llm in loaded:
            llm.close()
    identical = not differences and not differing
    if identical:
        message = f"The tokenizer is identical to the base model's GGUF ({Path(base_gguf).name})"
    else:
        message = (f"The tokenizer differs from the base model's GGUF ({Path(base_gguf).name}) in "
                   f"{', '.join(differences) or 'no header key'}; "
                   + (f"{len(differing)} of {len(TOKENIZER_PROBES)} probe texts tokenize differently"
                      if differing else f"all {len(TOKENIZER_PROBES)} probe texts tokenize the same"))
    return {"compared_with": Path(base_gguf).name, "identical": identical, "differing_keys": differences,
            "probes": len(TOKENIZER_PROBES), "probes_tokenized_differently": len(differing), "message": message}
