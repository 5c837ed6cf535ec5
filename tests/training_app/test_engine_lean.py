"""The memory-lean training ops (training_app/engine/lean.py) compute what the plain modules
compute, to float32 tolerance, in the forward pass and in every gradient, and keep less for
backward; packed one-row batches attend per example."""
from __future__ import annotations

import pytest

from tests import tinymodels
from training_app.engine import lean
from training_app.engine.config import parse_job_config
from training_app.engine.data import IGNORE_INDEX, PackingCollator, encode_records

TOL = dict(atol=1e-5, rtol=1e-4)


def _grads(fn, *tensors):
    import torch

    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    torch.manual_seed(7)
    (out * torch.randn_like(out)).sum().backward()
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("p", [0.0, 0.1])
def test_lora_delta_matches_dropout_then_two_matmuls(p):
    import torch

    torch.manual_seed(0)
    x, a, b = torch.randn(2, 9, 24), torch.randn(4, 24), torch.randn(16, 4)
    keep = lean.keep_mask(x, p) if p else None
    scale = 2.0

    def plain(x, a, b):
        xd = x if keep is None else x * keep / (1 - p)
        return (xd @ a.T @ b.T) * scale

    want, want_grads = _grads(plain, x, a, b)
    got, got_grads = _grads(lambda x, a, b: lean.lora_delta(x, a, b, p=p, scale=scale, training=True, keep=keep), x, a, b)
    assert torch.allclose(got, want, **TOL)
    for g, w, name in zip(got_grads, want_grads, "xab"):
        assert torch.allclose(g, w, **TOL), (name, (g - w).abs().max())
    if p:  # the mask drops about p of the input, and evaluation drops nothing
        assert abs(float((~keep).float().mean()) - p) < 0.08
        ev = lean.lora_delta(x, a, b, p=p, scale=scale, training=False)
        assert torch.allclose(ev, (x @ a.T @ b.T) * scale, **TOL)


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_gated_product_matches_the_activation_times_up(kind):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    gate, up = torch.randn(3, 7, 32) * 3, torch.randn(3, 7, 32)
    act = F.silu if kind == "silu" else (lambda g: F.gelu(g, approximate="tanh"))
    want, want_grads = _grads(lambda g, u: act(g) * u, gate, up)
    got, got_grads = _grads(lambda g, u: lean.gated_product(g, u, kind), gate, up)
    assert torch.allclose(got, want, **TOL)
    for g, w in zip(got_grads, want_grads):
        assert torch.allclose(g, w, **TOL), (g - w).abs().max()


def _peft(folder, targets, dropout=0.0, four_bit=False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(3)
    quantized = {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float32)} if four_bit else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **quantized)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():  # lora_B starts at zero: give it values so the adapter's path counts
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model


@pytest.mark.parametrize(("arch", "four_bit"), [(a, False) for a in ("llama", "gemma", "qwen3") if a in tinymodels.ARCHITECTURES]
                         + [("llama", True)], ids=lambda v: {True: "qlora", False: "lora"}.get(v, v))
def test_a_lean_peft_model_gives_the_plain_models_loss_and_lora_gradients(arch, four_bit, demo_model_files, tmp_path):
    """Plain LoRA layers and QLoRA's 4-bit ones alike."""
    import torch

    folder = tmp_path / arch
    tinymodels.make(arch, folder, demo_model_files[0])
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    plain, leaner = _peft(folder, targets, four_bit=four_bit), _peft(folder, targets, four_bit=four_bit)
    counts = lean.make_lean(leaner)
    assert counts == {"lora": 2 * len(targets), "mlp": 2}
    torch.manual_seed(5)
    ids = torch.randint(0, 49152, (2, 24))
    results = []
    for model in (plain, leaner):
        model.train()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((float(loss), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}))
    assert abs(results[0][0] - results[1][0]) < 1e-5
    assert results[0][1].keys() == results[1][1].keys() and len(results[0][1]) == 4 * len(targets)
    for name, grad in results[0][1].items():
        assert torch.allclose(results[1][1][name], grad, atol=1e-5, rtol=1e-3), (name, (results[1][1][name] - grad).abs().max())


def _saved_bytes(model, ids):
    """Bytes of the distinct storages autograd keeps for backward in one forward pass of the
    decoder (the layers; the loss is engine/loss.py's and tested there)."""
    import torch

    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.get_base_model().get_decoder()(input_ids=ids).last_hidden_state.sum()
    return sum(seen.values())


def test_a_lean_model_keeps_less_for_backward(demo_model_files, tmp_path):
    """With LoRA dropout on the seven linear layers and a gated MLP, the plain modules keep a
    dropped copy of every adapted input and three MLP-wide tensors; the lean ones keep masks and two."""
    import torch

    folder = tmp_path / "llama"
    tinymodels.make("llama", folder, demo_model_files[0])
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    plain, leaner = _peft(folder, targets, 0.05), _peft(folder, targets, 0.05)
    lean.make_lean(leaner)
    ids = torch.randint(0, 49152, (1, 512))
    plain.train(), leaner.train()
    before, after = _saved_bytes(plain, ids), _saved_bytes(leaner, ids)
    assert after < 0.75 * before, (before, after)


@pytest.mark.parametrize("arch", [a for a in ("llama", "qwen2", "phi3") if a in tinymodels.ARCHITECTURES])
def test_one_packed_row_attends_per_example(arch, demo_model_files, tmp_path):
    """The one-row batch of the varlen attention: no padding at all, and each example's logits and
    gradients as if it were alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / arch
    tinymodels.make(arch, folder, demo_model_files[0])
    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    records = [{"messages": [{"role": "user", "content": "Say something " * (3 * i + 1)},
                             {"role": "assistant", "content": "Arr " * (5 * i + 2)}]} for i in range(4)]
    examples, _ = encode_records(tok, records, 256)
    batch = PackingCollator(tok.pad_token_id, one_row=True)(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths))  # no padding
    assert batch["cu_seq_lens_q"] == [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                 attn_implementation=lean.register_attention()).eval()
    model.config.use_cache = False
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   cu_seq_lens_q=batch["cu_seq_lens_q"]).logits[0]
    offset = 0
    for e, n in zip(examples, lengths):
        alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
        assert torch.allclose(packed[offset:offset + n], alone, atol=2e-4), (arch, (packed[offset:offset + n] - alone).abs().max())
        assert int(batch["labels"][0, offset]) == IGNORE_INDEX
        offset += n


def test_the_engine_picks_varlen_only_where_attention_is_plain_causal(demo_model_files, tmp_path):
    packed = parse_job_config({}, {"max_seq_length": 256, "packing": "padding_free"}, {"enabled": False})
    padded = parse_job_config({}, {"max_seq_length": 256, "packing": "none"}, {"enabled": False})
    assert lean.varlen_reason(demo_model_files[0], packed) is None
    assert "padded" in lean.varlen_reason(demo_model_files[0], padded)
    if "gemma2" in tinymodels.ARCHITECTURES:  # soft-capped attention logits need the eager path
        tinymodels.make("gemma2", tmp_path / "g2", demo_model_files[0])
        assert "soft-capped" in lean.varlen_reason(tmp_path / "g2", packed)
