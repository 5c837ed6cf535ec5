"""A LoRA adapter merged into its base model's weights, offered only when the merged model
computes what base + adapter computes. Django-free."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

CHECK_PROMPTS = ("The capital of France is", "def fibonacci(n):", "What is the capital of France?")
MAX_LOGIT_DIFF = 1e-3


def _peft_model(base_dir: str | Path, adapter_dir: str | Path) -> tuple[Any, Any]:
    """Base model (float32) with the adapter applied, and the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, tokenizer


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out: Path,
                  progress: Callable[[float, str], None]) -> dict[str, Any]:
    """Merge the adapter into the base weights, save a safetensors folder with the tokenizer at
    `out`, and check that the merged model's logits equal base + adapter on a few prompts (a
    RuntimeError when they do not); returns the check."""
    import torch

    model, tokenizer = _peft_model(base_dir, adapter_dir)
    progress(0.2, "Loaded the base model and the adapter")
    batch = [tokenizer(p, return_tensors="pt") for p in CHECK_PROMPTS]
    with torch.no_grad():
        before = [model(**b).logits for b in batch]
    merged = model.merge_and_unload()
    progress(0.5, "Merged the LoRA weights into the base weights")
    with torch.no_grad():
        after = [merged(**b).logits for b in batch]
    diff = max(float((a - b).abs().max()) for a, b in zip(before, after))
    same_top1 = all(bool((a.argmax(-1) == b.argmax(-1)).all()) for a, b in zip(before, after))
    if diff > MAX_LOGIT_DIFF or not same_top1:
        raise RuntimeError(f"merged logits differ from base + adapter by up to {diff:.2e}; not offering it")
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    progress(0.7, f"Saved the merged model; its logits match base + adapter (max difference {diff:.1e})")
    return {"prompts": list(CHECK_PROMPTS), "max_abs_logit_diff": diff, "same_greedy_tokens": same_top1}
