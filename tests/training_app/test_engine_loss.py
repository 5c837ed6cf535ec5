"""The loss at supervised positions, a chunk of logits at a time (training_app/engine/loss.py):
the same loss and gradients as full logits with cross_entropy(ignore_index=-100)."""
from __future__ import annotations

import pytest

from training_app.engine.config import parse_job_config
from training_app.engine.data import PackingCollator, encode_records
from training_app.engine.loss import SupervisedLoss, linear_cross_entropy, plain_loss_reason
from training_app.engine.trainer import NullHooks, load_model_for_training, train


def _records(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question {i}: " + "why " * (i % 4)},
                          {"role": "assistant", "content": "Arr " * (2 + (i * 5) % 9) + f"matey {i}."}]} for i in range(n)]


def _plain(logits, labels, num_items_in_batch=None):
    import torch

    shifted = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    if num_items_in_batch is None:
        return torch.nn.functional.cross_entropy(flat, shifted, ignore_index=-100)
    return torch.nn.functional.cross_entropy(flat, shifted, ignore_index=-100, reduction="sum") / num_items_in_batch


@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain-head", "gemma2-softcap"])
def test_the_chunked_cross_entropy_gives_the_loss_and_gradients_of_full_logits(softcap):
    """Hidden states, head weight and bias all get the gradients of logits formed in one piece,
    with logits softcapped as Gemma 2 caps them, over chunks smaller than the rows."""
    import torch

    torch.manual_seed(0)
    n, h, vocab = 37, 16, 301
    hidden = torch.randn(n, h, dtype=torch.float32, requires_grad=True)
    weight = (torch.randn(vocab, h, dtype=torch.float32) * 2).requires_grad_()
    bias = torch.randn(vocab, dtype=torch.float32, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    logits = torch.nn.functional.linear(hidden, weight, bias)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 0.5, (hidden, weight, bias))
    got = linear_cross_entropy(hidden, weight, bias, targets, rows=8, softcap=softcap)
    grads = torch.autograd.grad(got * 0.5, (hidden, weight, bias))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def demo_lora(demo_model_files):
    """The demo model with a LoRA adapter whose B is not zero (else lora_A's gradient is zero)."""
    import torch

    config = parse_job_config({"rank": 8, "alpha": 16, "dropout": 0.0}, {"max_seq_length": 64}, {"enabled": False})
    model, tokenizer = load_model_for_training(demo_model_files[0], config)
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    long = {"messages": [{"role": "user", "content": "Tell a tale."}, {"role": "assistant", "content": "Arr " * 40}]}
    examples, _ = encode_records(tokenizer, _records(5) + [long], 64)
    return model, PackingCollator(tokenizer.pad_token_id)(examples)


@pytest.mark.parametrize("num_items_in_batch", [None, 3 * 41], ids=["mean", "accumulation"])
def test_the_supervised_loss_equals_full_logits_on_packed_rows_with_lora(demo_lora, num_items_in_batch):
    """The demo model with LoRA, examples packed into rows: the loss, the LoRA gradients and the
    gradient reaching the decoder's output equal the plain path's, chunk after chunk (5 rows at a
    time), averaged over the micro-batch's supervised tokens or divided by the count the Trainer
    gives for the whole accumulated step."""
    import torch

    model, batch = demo_lora
    assert batch["input_ids"].shape[0] < 7  # packed: several examples share a row
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    lora = [p for p in model.parameters() if p.requires_grad]
    decoder = model.get_base_model().get_decoder()
    seen = {}

    def keep(module, args, output):
        output.last_hidden_state.retain_grad()
        seen["hidden"] = output.last_hidden_state

    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    hook = decoder.register_forward_hook(keep)
    try:
        model.zero_grad()
        outputs = model(**inputs)
        expected = _plain(outputs.logits, batch["labels"], num_items_in_batch)
        expected.backward()
        expected_grads = [p.grad.clone() for p in lora] + [seen["hidden"].grad.clone()]
        model.zero_grad()
        loss = SupervisedLoss(model, rows=5)
        try:
            outputs = model(**inputs, **loss.extra_inputs)
            assert outputs.logits.shape[1] == 1  # the head ran on one position per row
            got = loss(outputs, batch["labels"], num_items_in_batch=num_items_in_batch)
        finally:
            loss.remove()
        got.backward()
        grads = [p.grad.clone() for p in lora] + [seen["hidden"].grad.clone()]
    finally:
        hook.remove()
        model.zero_grad()
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert supervised > 3 * 5  # several chunks
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(float(g.abs().max()) > 0 for g, name in zip(expected_grads, names) if "lora_A" in name)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=2e-5)


def test_no_vocabulary_wide_tensor_is_kept_for_the_backward_pass():
    """What autograd keeps from the forward pass: the plain path keeps logits for every position
    (rows x sequence x vocabulary); the chunked path nothing vocabulary-wide."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = 1009
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, use_cache=False))
    model.requires_grad_(False)
    model.model.layers[0].mlp.requires_grad_(True)  # as LoRA: the head is frozen, the hidden states need a gradient
    ids = torch.randint(0, vocab, (3, 40))
    labels = ids.clone()
    labels[:, :10] = -100

    def saved_vocab_wide(run) -> list[tuple[int, ...]]:
        shapes = []

        def pack(t):
            if vocab in t.shape and t.data_ptr() != model.lm_head.weight.data_ptr():
                shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
        return shapes

    assert saved_vocab_wide(lambda: _plain(model(input_ids=ids).logits, labels))
    loss = SupervisedLoss(model, rows=7)
    try:
        assert saved_vocab_wide(lambda: loss(model(input_ids=ids, **loss.extra_inputs), labels)) == []
    finally:
        loss.remove()


def test_a_tiny_gemma2_gives_its_own_softcapped_loss(tmp_path):
    """Gemma 2 caps its final logits (tanh); the chunked loss through the model equals the loss
    the model computes itself from labels."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=257, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, final_logit_softcapping=3.0, use_cache=False)
    model = Gemma2ForCausalLM(config).float()
    assert plain_loss_reason(model) is None
    ids = torch.randint(0, 257, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 9:] = -100
    expected = model(input_ids=ids, labels=labels).loss
    loss = SupervisedLoss(model, rows=3)
    assert loss.softcap == 3.0
    got = loss(model(input_ids=ids, **loss.extra_inputs), labels)
    loss.remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_models_whose_head_the_chunked_loss_does_not_reproduce_keep_the_plain_loss():
    import torch
    from transformers import CohereConfig, CohereForCausalLM, LlamaConfig, LlamaForCausalLM

    small = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}
    assert "architecture" in plain_loss_reason(CohereForCausalLM(CohereConfig(**small, logit_scale=0.5)))
    llama = LlamaForCausalLM(LlamaConfig(**small))
    assert plain_loss_reason(llama) is None
    llama.lm_head = torch.nn.Sequential(llama.lm_head)
    assert "output layer" in plain_loss_reason(llama)


def test_a_training_run_has_the_same_losses_as_with_full_logits(demo_model_files, tmp_path, monkeypatch):
    """Three optimizer steps of two accumulated micro-batches each, then validation: the first
    step's loss is the plain path's (every position's logits) to fp32 rounding, and the curve and
    the validation loss stay with it (AdamW carries rounding differences into the weights)."""
    config = parse_job_config({"rank": 8, "alpha": 16, "dropout": 0.0},
                              {"max_steps": 3, "batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 2e-3,
                               "max_seq_length": 64, "warmup_steps": 0, "lr_scheduler": "constant", "save_steps": 3},
                              {"enabled": False})

    def run(name: str) -> NullHooks:
        hooks = NullHooks()
        train(model_dir=demo_model_files[0], records=_records(12), eval_records=_records(15)[-3:], config=config,
              output_dir=tmp_path / name, hooks=hooks)
        return hooks

    chunked = run("chunked")
    assert not any("every position's logits" in m for _, m in chunked.messages)
    monkeypatch.setattr("training_app.engine.trainer.plain_loss_reason", lambda model: "as asked by this test")
    plain = run("plain")
    assert ("info", "The loss is computed from every position's logits: as asked by this test") in plain.messages
    losses, plain_losses = [m["loss"] for m in chunked.metrics], [m["loss"] for m in plain.metrics]
    assert len(losses) == 3 and losses[0] == pytest.approx(plain_losses[0], rel=1e-5)
    assert losses == pytest.approx(plain_losses, rel=1e-3)
    assert [e["eval_loss"] for e in chunked.evaluations] == pytest.approx([e["eval_loss"] for e in plain.evaluations],
                                                                           rel=1e-3)
    assert len(chunked.evaluations) == 1


def test_the_memory_estimate_holds_one_chunk_of_logits_where_the_chunked_loss_applies():
    from dataclasses import replace

    from training_app.engine.estimate import estimate_memory
    from training_app.engine.loss import chunk_rows
    from training_app.engine.modelinfo import ModelInfo

    shapes = (("q_proj", 576, 576), ("v_proj", 576, 192))
    info = ModelInfo("llama", 30, 576, 9, 3, 1536, 49152, 8192, True, ("q_proj", "v_proj"), shapes)

    def loss_term(model_info: ModelInfo, seq: int) -> int:
        config = parse_job_config({"target_modules": ["q_proj", "v_proj"]}, {"batch_size": 4, "max_seq_length": seq},
                                  {"enabled": False})
        return estimate_memory(model_info, 134_515_008, config, device="cpu")["breakdown_bytes"]["logits"]

    rows = chunk_rows(49152)
    assert loss_term(info, 1024) == 3 * rows * 49152 * 4 + 2 * 4 * 1024 * 576 * 4
    assert loss_term(info, 4096) - loss_term(info, 1024) == 2 * 4 * 3072 * 576 * 4  # only the hidden states grow
    assert loss_term(replace(info, model_type="cohere"), 1024) == 3 * 4 * 1024 * 49152 * 4  # full logits for every position
