"""The GGUF writers against llama.cpp itself: a model or adapter written here must compute in
llama.cpp what it computes in transformers (same greedy token at every position), the tokenizer
must split text exactly as the original GGUF does, and quantization goes through llama.cpp."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from adapters_app.engine import gguf as engine
from adapters_app.engine.llama import load

TEXTS = ["The capital of France is Paris.", "def add(a, b):\n    return a + b  # 42", "  Ünïcödé ✓ and 12345 digits"]


def _llama_logits(model_path: Path, tokens: list[int], lora_path: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora_path) if lora_path else None, n_ctx=256,
                logits_all=True, verbose=False, n_threads=2)
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)])
    finally:
        llm.close()


def _hf_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


@pytest.fixture(scope="module")
def hf_model(demo_model_files):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, _ = demo_model_files
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def f16_from_hf(demo_model_files, tmp_path_factory) -> Path:
    """The demo model written from its HF folder alone (tokenizer built from tokenizer.json)."""
    hf_dir, _ = demo_model_files
    return engine.write_model_gguf(Path(hf_dir), tmp_path_factory.mktemp("gguf") / "demo.f16.gguf", name="demo")


@pytest.fixture(scope="module")
def f32_from_hf(demo_model_files, tmp_path_factory) -> Path:
    hf_dir, _ = demo_model_files
    return engine.write_model_gguf(Path(hf_dir), tmp_path_factory.mktemp("gguf") / "demo.f32.gguf", name="demo",
                                   dtype="f32")


def test_a_model_written_from_hf_computes_what_transformers_computes(hf_model, f32_from_hf, f16_from_hf):
    model, tokenizer = hf_model
    for text in TEXTS:  # long enough that a wrong rope base or q/k row order shows
        tokens = tokenizer(text)["input_ids"]
        theirs = _hf_logits(model, tokens)
        exact, half = _llama_logits(f32_from_hf, tokens), _llama_logits(f16_from_hf, tokens)
        assert np.abs(exact - theirs).max() < 0.05, text  # same weights, same maths
        assert (half.argmax(-1) == theirs.argmax(-1)).mean() >= 0.8, text  # f16 weights may flip a near-tie
        assert np.abs(half - theirs).mean() < 0.5, text


def test_the_tokenizer_and_chat_template_match_the_original_gguf(demo_model_files, f16_from_hf):
    from llama_cpp import Llama

    _, original = demo_model_files
    ours = Llama(model_path=str(f16_from_hf), vocab_only=True, verbose=False)
    theirs = Llama(model_path=str(original), vocab_only=True, verbose=False)
    try:
        for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
            assert ours.tokenize(text.encode(), special=True) == theirs.tokenize(text.encode(), special=True), text
        meta = engine.read_metadata(f16_from_hf)
        assert meta["tokenizer.ggml.model"] == "gpt2" and "<|im_start|>" in meta["tokenizer.chat_template"]
        assert ours.metadata.get("tokenizer.ggml.eos_token_id") == theirs.metadata.get("tokenizer.ggml.eos_token_id")
    finally:
        ours.close()
        theirs.close()


def test_a_lora_adapter_gguf_changes_llama_cpp_as_peft_changes_transformers(hf_model, f32_from_hf, demo_model_files,
                                                                            tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer = hf_model
    hf_dir, _ = demo_model_files
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj", "up_proj"],
                                                  init_lora_weights=False))  # random B: a visible change
    try:
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.02)
        peft_model.save_pretrained(str(tmp_path / "adapter"))
        config = json.loads((Path(hf_dir) / "config.json").read_text())
        out = engine.write_adapter_gguf(tmp_path / "adapter", config, tmp_path / "adapter.gguf", name="random")
        meta = engine.read_metadata(out)
        assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
        assert meta["adapter.lora.alpha"] == 32.0 and meta["tensor_count"] == 2 * 5 * config["num_hidden_layers"]
        tokens = tokenizer(TEXTS[1])["input_ids"]
        with_adapter = _hf_logits(peft_model, tokens)
        ours = _llama_logits(f32_from_hf, tokens, lora_path=out)
        base = _llama_logits(f32_from_hf, tokens)
        assert np.abs(base - with_adapter).max() > 1.0  # the adapter matters...
        assert np.abs(ours - with_adapter).max() < 0.05  # ...and llama.cpp applies it exactly as PEFT does
    finally:
        peft_model.unload()


def test_quantization_goes_through_llama_cpp_and_shrinks_the_file(f16_from_hf, tmp_path):
    from adapters_app.engine.llama import generate

    sizes = {"f16": f16_from_hf.stat().st_size}
    for q in ("q8_0", "q4_k_m"):
        out = engine.quantize(f16_from_hf, tmp_path / f"demo.{q}.gguf", q)
        sizes[q] = out.stat().st_size
        llm = load(out, n_ctx=256)
        try:
            assert generate(llm, "Say hello.", max_tokens=8).completion_tokens > 0
        finally:
            llm.close()
    assert sizes["q4_k_m"] < sizes["q8_0"] < 0.6 * sizes["f16"], sizes
    with pytest.raises(engine.UnsupportedModel, match="q3_nope"):
        engine.quantize(f16_from_hf, tmp_path / "x.gguf", "q3_nope")


def test_unsupported_architectures_and_adapters_are_refused_before_work(demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    with pytest.raises(engine.UnsupportedModel, match="GPT2LMHeadModel is not supported yet"):
        engine.HParams.from_config({**config, "architectures": ["GPT2LMHeadModel"]})
    assert engine.HParams.from_config({**config, "architectures": ["Qwen2ForCausalLM"]}).arch == "qwen2"
    with pytest.raises(engine.UnsupportedModel, match="DoRA"):
        engine.check_adapter_exportable({"peft_type": "LORA", "r": 8, "use_dora": True})
    with pytest.raises(engine.UnsupportedModel, match="modules_to_save"):
        engine.check_adapter_exportable({"peft_type": "LORA", "r": 8, "modules_to_save": ["lm_head"]})
    assert engine.adapter_lora_scale_alpha({"r": 16, "lora_alpha": 8, "use_rslora": True}) == pytest.approx(32.0)
    folder = tmp_path / "weird"
    shutil.copytree(hf_dir, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(engine.UnsupportedModel, match="pre-tokenization"):
        engine.write_model_gguf(folder, tmp_path / "weird.gguf", name="weird")


def _tiny_model(kind: str, hf_dir: str, folder: Path):
    """A small random model of another supported architecture, with the demo model's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, Qwen2Config

    common = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    if kind == "qwen2":  # q/k/v biases, NEOX rope (no row reordering), untied output
        config = Qwen2Config(**common, tie_word_embeddings=False, rope_theta=1_000_000.0)
    else:  # Llama 3.1 style long-context rope (llama.cpp reads per-dimension factors from rope_freqs)
        config = LlamaConfig(**common, tie_word_embeddings=False, rope_theta=500_000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.5)  # make a bias mistake visible
            elif "q_proj" in name or "k_proj" in name:
                param.normal_(0, 0.3)  # sharp attention, so a rope or row-order mistake changes the output
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(hf_dir).save_pretrained(str(folder))
    return model


@pytest.mark.parametrize("kind", ["qwen2", "llama3-rope"])
def test_other_supported_architectures_compute_what_transformers_computes(kind, demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    model = _tiny_model(kind, hf_dir, tmp_path / kind)
    out = engine.write_model_gguf(tmp_path / kind, tmp_path / f"{kind}.gguf", name=kind, dtype="f32")
    assert engine.read_metadata(out)["general.architecture"] == ("qwen2" if kind == "qwen2" else "llama")
    tokens = list(range(1000, 1100))  # 100 positions: past the 64 of the scaled rope's original context
    ours, theirs = _llama_logits(out, tokens), _hf_logits(model, tokens)
    assert np.abs(ours - theirs).max() < 0.05, float(np.abs(ours - theirs).max())
