"""GGUF export through llama.cpp's own converters, checked in llama.cpp itself: a model converted
here computes in llama.cpp what it computes in transformers, an adapter changes llama.cpp as PEFT
changes transformers, for every architecture appendix C names (and the newer ones the installed
transformers has); the tokenizer is compared with the base model's own GGUF; quantization goes
through llama.cpp; adapters llama.cpp cannot hold are refused before any work."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from adapters_app.engine import converters
from adapters_app.engine import gguf as engine
from adapters_app.engine.llama import generate, load
from tests import tinymodels
from training_app.engine.modelinfo import model_info

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


def _random_lora(model, targets: list[str], folder: Path):
    """PEFT LoRA on `targets` with random non-zero B matrices (a visible change), saved in `folder`."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=targets, init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.1)
    peft_model.save_pretrained(str(folder))
    return peft_model


# --- the converters themselves ----------------------------------------------------------------


def test_setup_installed_the_converters_of_the_installed_llama_cpp():
    info = converters.source()
    assert info["llama_cpp_python"] == converters.llama_cpp_version()
    assert info["sdist"] == f"llama_cpp_python-{info['llama_cpp_python']}.tar.gz" and len(info["sdist_sha256"]) == 64
    folder = converters.converters_dir()
    for name in (*converters.SCRIPTS, "conversion/__init__.py", "gguf-py/gguf/gguf_writer.py", "LICENSE"):
        assert (folder / name).is_file(), name
    known = converters.supported_architectures()
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Phi3ForCausalLM", "PhiForCausalLM",
                 "GemmaForCausalLM", "Gemma2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in known, arch


def _sdist(path: Path, version: str, members: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    root = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name if name.startswith(("/", "..")) else root + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(root + name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return path


def test_fetch_keeps_only_the_converters_of_an_sdist(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXUS_LLAMA_CONVERTERS_DIR", str(tmp_path / "conv"))
    good = {"convert_hf_to_gguf.py": b"# hf", "convert_lora_to_gguf.py": b"# lora", "LICENSE": b"MIT",
            "conversion/__init__.py": b"TEXT_MODEL_MAP: dict[str, str] = {'LlamaForCausalLM': 'llama'}\n",
            "gguf-py/gguf/__init__.py": b"", "gguf-py/pyproject.toml": b'[tool.poetry]\nversion = "9.9.9"\n',
            "CMakeLists.txt": b"not kept", "ggml/src/ggml.c": b"not kept"}
    sdist = _sdist(tmp_path / "llama_cpp_python-0.0.1.tar.gz", "0.0.1", good, links=("conversion/link.py",))
    folder = converters.fetch("0.0.1", sdist=sdist)
    kept = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert kept == ["LICENSE", "SOURCE.json", "conversion/__init__.py", "convert_hf_to_gguf.py",
                    "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py", "gguf-py/pyproject.toml"]
    assert converters.source("0.0.1")["gguf_py"] == "9.9.9"
    assert converters.supported_architectures("0.0.1") == {"LlamaForCausalLM": "llama"}
    assert converters.fetch("0.0.1", sdist=tmp_path / "no-such-file") == folder  # installed: nothing to do

    broken = _sdist(tmp_path / "llama_cpp_python-0.0.2.tar.gz", "0.0.2",
                    {k: v for k, v in good.items() if k != "convert_lora_to_gguf.py"})
    with pytest.raises(converters.ConverterMissing, match="lacks convert_lora_to_gguf.py"):
        converters.fetch("0.0.2", sdist=broken)
    assert sorted(p.name for p in (tmp_path / "conv").iterdir()) == ["llama-cpp-python-0.0.1"]  # nothing half-written
    with pytest.raises(converters.ConverterMissing, match="converters fetch"):
        converters.source("0.0.3")


# --- the demo model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(demo_model_files):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, _ = demo_model_files
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def demo_ggufs(demo_model_files, tmp_path_factory) -> dict[str, Path]:
    """The demo model converted from its HF folder at f32 and f16, with the progress reported."""
    hf_dir, _ = demo_model_files
    folder = tmp_path_factory.mktemp("gguf")
    out = {}
    for outtype in ("f32", "f16"):
        seen = []
        out[outtype] = engine.export_model(Path(hf_dir), folder / f"demo.{outtype}.gguf", outtype, name="demo",
                                           progress=lambda f, m: seen.append((f, m)))
        fractions = [f for f, _ in seen]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 5, seen
        assert any("planning" in m for _, m in seen) and any("writing" in m for _, m in seen)
    return out


def test_the_demo_model_computes_in_llama_cpp_what_it_computes_in_transformers(hf_model, demo_ggufs):
    model, tokenizer = hf_model
    for text in TEXTS:
        tokens = tokenizer(text)["input_ids"]
        theirs = _hf_logits(model, tokens)
        exact, half = _llama_logits(demo_ggufs["f32"], tokens), _llama_logits(demo_ggufs["f16"], tokens)
        assert np.abs(exact - theirs).max() < 0.05, text  # same weights, same maths
        assert (half.argmax(-1) == theirs.argmax(-1)).mean() >= 0.8, text  # f16 weights may flip a near-tie
        assert np.abs(half - theirs).mean() < 0.5, text
    meta = engine.read_metadata(demo_ggufs["f16"])
    assert meta["general.architecture"] == "llama" and meta["general.name"] == "demo"
    assert meta["tokenizer.ggml.model"] == "gpt2" and "<|im_start|>" in meta["tokenizer.chat_template"]


def test_the_tokenizer_is_compared_with_the_base_models_own_gguf(demo_model_files, demo_ggufs, tmp_path):
    _, original = demo_model_files
    same = engine.compare_tokenizer(demo_ggufs["f16"], original)
    assert same["probes_tokenized_differently"] == 0, same  # llama.cpp splits every probe text alike
    assert same["identical"] == (not same["differing_keys"])
    assert same["message"].startswith("The tokenizer is identical" if same["identical"] else "The tokenizer differs")
    # a model with the same tokenizer but another chat template: said, by key
    tinymodels.make("llama", tmp_path / "other", demo_model_files[0])
    config = json.loads((tmp_path / "other" / "tokenizer_config.json").read_text())
    (tmp_path / "other" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ 1 }}"}))
    (tmp_path / "other" / "chat_template.jinja").unlink(missing_ok=True)
    other = engine.export_model(tmp_path / "other", tmp_path / "other.gguf", "f32", name="other")
    differs = engine.compare_tokenizer(other, demo_ggufs["f16"])
    assert not differs["identical"] and differs["differing_keys"] == ["tokenizer.chat_template"], differs
    assert differs["message"] == ("The tokenizer differs from the base model's GGUF (demo.f16.gguf) in "
                                  "tokenizer.chat_template; all 4 probe texts tokenize the same")


def test_quantization_goes_through_llama_cpp_and_shrinks_the_file(demo_model_files, demo_ggufs, tmp_path):
    hf_dir, _ = demo_model_files
    sizes = {"f16": demo_ggufs["f16"].stat().st_size}
    for q in ("q8_0", "q4_k_m"):  # q8_0 by the converter, q4_k_m by llama_model_quantize from its f16
        out = engine.export_model(Path(hf_dir), tmp_path / f"demo.{q}.gguf", q, name="demo")
        sizes[q] = out.stat().st_size
        assert not list(tmp_path.glob("*partial*"))  # no intermediate f16 left behind
        llm = load(out, n_ctx=256)
        try:
            assert generate(llm, "Say hello.", max_tokens=8).completion_tokens > 0
        finally:
            llm.close()
    assert sizes["q4_k_m"] < sizes["q8_0"] < 0.6 * sizes["f16"], sizes
    assert engine.read_metadata(tmp_path / "demo.q8_0.gguf")["tensor_types"] == ["F32", "Q8_0"]
    with pytest.raises(engine.UnsupportedModel, match="q3_nope"):
        engine.export_model(Path(hf_dir), tmp_path / "x.gguf", "q3_nope", name="demo")


# --- every architecture ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", tinymodels.ARCHITECTURES)
def test_each_architecture_and_its_adapter_compute_in_llama_cpp_what_they_compute_in_transformers(
        arch, demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    model = tinymodels.make(arch, tmp_path / arch, hf_dir)
    # named neutrally: llama.cpp gives a model named "phi3" Phi-3's special-token rules, which need its vocabulary
    out = engine.export_model(tmp_path / arch, tmp_path / f"{arch}.gguf", "f32", name="tiny random model")
    tokens = list(range(3, 67)) + list(range(100, 136))  # 100 positions: past the scaled rope's 32
    ours, theirs = _llama_logits(out, tokens), _hf_logits(model, tokens)
    assert np.abs(ours - theirs).max() < 0.05, (arch, float(np.abs(ours - theirs).max()))

    targets = model_info(str(tmp_path / arch)).default_targets()  # appendix C, in the model's own names
    peft_model = _random_lora(model, targets, tmp_path / "adapter")
    adapter = engine.export_adapter(tmp_path / "adapter", tmp_path / arch, tmp_path / f"{arch}.lora.gguf")
    meta = engine.read_metadata(adapter)
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == 32.0
    assert meta["tensor_count"] == 2 * len(targets) * 2  # A and B per target per layer
    with_adapter = _hf_logits(peft_model, tokens)
    assert np.abs(theirs - with_adapter).max() > 0.5  # the adapter matters...
    applied = _llama_logits(out, tokens, lora_path=adapter)
    assert np.abs(applied - with_adapter).max() < 0.05, (arch, float(np.abs(applied - with_adapter).max()))


# --- refusals before work ---------------------------------------------------------------------


def test_unknown_architectures_and_unholdable_adapters_are_refused_before_work(demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    folder = tmp_path / "toy"
    shutil.copytree(hf_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["NexusToyForCausalLM"]}))
    with pytest.raises(engine.UnsupportedModel, match="NexusToyForCausalLM is not supported by the llama.cpp of "
                                                      "llama-cpp-python"):
        engine.export_model(folder, tmp_path / "toy.gguf", "f16", name="toy")
    assert not (tmp_path / "toy.gguf").exists()
    lora = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}
    cases = [({**lora, "use_dora": True}, None, "DoRA"),
             ({**lora, "modules_to_save": ["lm_head"]}, None, "modules_to_save"),
             ({**lora, "rank_pattern": {"q_proj": 4}}, None, "per-module ranks"),
             ({**lora, "target_modules": ["q_proj", "embed_tokens"]}, None, r"embeddings or output head \(embed_tokens\)"),
             (lora, ["base_model.model.model.embed_tokens.lora_embedding_A"], r"\(embed_tokens, embeddings\)"),
             ({**lora, "peft_type": "IA3"}, None, "IA3 adapters")]
    for config_, names, words in cases:
        with pytest.raises(engine.UnsupportedModel, match=words):
            engine.check_adapter_exportable(config_, names)
    engine.check_adapter_exportable(lora, ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"])


def test_a_converter_failure_says_what_the_converter_said(demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    folder = tmp_path / "broken"
    shutil.copytree(hf_dir, folder)
    weights = next(folder.glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: 8 + int.from_bytes(data[:8], "little") + 4096])  # the header whole, the tensors cut short
    said = r"convert_hf_to_gguf\.py failed \(exit \d+\): ValueError: mmap length is greater than file size$"
    with pytest.raises(converters.ConversionFailed, match=said):
        engine.export_model(folder, tmp_path / "broken.gguf", "f16", name="broken")
