"""Small random models of each architecture that appendix C names (Llama, Mistral, Qwen2, Phi-3,
Gemma) plus Phi-2, Qwen3, Gemma 2 and Gemma 3 where the installed transformers has them, saved
as HF folders with the demo model's tokenizer (so the engine can train them on chat data).

llama.cpp's converters for Gemma, Qwen2/3 and Phi read a SentencePiece `tokenizer.model` first; a
small one is trained here from Python's own source files (no network) and saved beside, so those
folders convert too (the logit tests feed token ids; the demo model tests the tokenizer itself).
Weights are random but sharpened where a conversion mistake would hide (q/k scale, biases), so a
wrong rope layout, norm offset or bias shows in the logits."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

COMMON = dict(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=2048)


# name -> (transformers config class, its arguments beyond COMMON)
SPECS = {
    # Llama 3.1 style long-context rope (llama.cpp reads per-dimension factors from rope_freqs)
    "llama": ("LlamaConfig", dict(tie_word_embeddings=False, rope_theta=500_000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32})),
    "mistral": ("MistralConfig", dict(sliding_window=None, tie_word_embeddings=False)),
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=False, rope_theta=1_000_000.0)),  # q/k/v biases
    "phi3": ("Phi3Config", dict(pad_token_id=0, tie_word_embeddings=False)),  # fused qkv and gate_up
    "gemma": ("GemmaConfig", dict(head_dim=16)),  # embeddings scaled by sqrt(hidden), norms 1 + w
    # Phi-2: LayerNorm, dense, fc1/fc2, partial rotary; llama.cpp takes its MLP width as 4 x hidden
    "phi": ("PhiConfig", dict(num_key_value_heads=4, partial_rotary_factor=0.5, intermediate_size=256)),
    "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True)),  # q/k norms
    "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                    final_logit_softcapping=30.0, attn_logit_softcapping=50.0)),
}


def _config(arch: str):
    import transformers

    name, kwargs = SPECS[arch]
    return getattr(transformers, name)(**{**COMMON, **kwargs})


def _available() -> tuple[str, ...]:
    import transformers

    return tuple(arch for arch, (name, _) in SPECS.items() if hasattr(transformers, name))


ARCHITECTURES = _available()
# Converters that read a SentencePiece tokenizer.model first, or identify a BPE tokenizer by the
# hash of its tokens for a probe text as their own transformers tokenizer class makes them (so the
# demo's tokenizer.json, read as a Qwen2 tokenizer, is not recognised)
SENTENCEPIECE = {"gemma", "gemma2", "qwen2", "qwen3", "phi3", "phi"}


@functools.lru_cache(maxsize=1)
def _sentencepiece_model() -> bytes:
    """A 512-piece SentencePiece model trained on this Python's standard library source."""
    import io
    import sysconfig

    import sentencepiece as spm

    lines = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("[a-m]*.py"))[:80]:
        lines += [line for line in path.read_text(errors="ignore").splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=512,
                                   model_type="unigram", byte_fallback=True, minloglevel=2,
                                   user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    return out.getvalue()


def make(arch: str, folder: Path, tokenizer_dir: str | Path, seed: int = 1):
    """A random `arch` model saved in `folder` (float32), with the demo tokenizer; the model back."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)  # a bias mistake shows
            elif any(k in name for k in ("q_proj", "k_proj", "qkv_proj", "Wqkv")):
                param.normal_(0, 0.3)  # sharp attention: a rope or row-order mistake changes the output
            elif "norm" in name and param.dim() == 1:
                param.normal_(0.0 if "gemma" in arch else 1.0, 0.2)  # Gemma's norms store weight - 1
    folder = Path(folder)
    model.save_pretrained(str(folder))
    for file in Path(tokenizer_dir).iterdir():  # the tokenizer files as they are (a re-save may change them)
        if file.is_file() and file.name != "config.json" and file.suffix in (".json", ".txt", ".jinja", ".model") \
                and not file.name.startswith(("generation_config", "model.safetensors")):
            shutil.copy(file, folder / file.name)
    if arch in SENTENCEPIECE:
        (folder / "tokenizer.model").write_bytes(_sentencepiece_model())
    return model
