"""The training engine on the demo model: padding-free packing, validation loss with the best
checkpoint and early stopping, control commands, optimizer and precision fallbacks."""
from __future__ import annotations

import json

import pytest

from training_app.engine.config import ConfigError, parse_job_config
from training_app.engine.data import IGNORE_INDEX, PackingCollator, PaddingCollator, encode_records, pack_rows
from training_app.engine.checkpoints import checkpoints
from training_app.engine.trainer import NullHooks, train


def _records(n: int, words: int = 6) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Question number {i}: " + "why " * (i % 5)},
                          {"role": "assistant", "content": " ".join(["Arr"] * (1 + (i * 7) % words)) + f" matey {i}."}]}
            for i in range(n)]


@pytest.mark.parametrize("lengths", [[5, 3, 2, 7, 1], [4, 4, 4], [10], [1, 9, 8, 2, 3, 3, 5]])
def test_packing_puts_every_example_in_one_row_no_longer_than_the_longest(lengths):
    rows = pack_rows(lengths)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max(lengths) for row in rows)
    assert len(rows) <= len(lengths)


def test_packed_rows_give_each_example_the_same_logits_and_loss_as_alone(demo_model_files):
    """Attention never crosses examples: a packed micro-batch computes exactly what the examples
    would compute one at a time, and no example learns to predict the next one's first token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    model = AutoModelForCausalLM.from_pretrained(str(demo_model_files[0]), dtype=torch.float32).eval()
    records = _records(4) + [{"messages": [{"role": "user", "content": "Tell a long tale."},
                                           {"role": "assistant", "content": "Arr " * 180 + "the end."}]}]
    examples, _ = encode_records(tok, records, 256)
    packed = PackingCollator(tok.pad_token_id)(examples)
    padded = PaddingCollator(tok.pad_token_id)(examples)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # less padding to compute
    assert int(packed["num_tokens"]) == int(padded["num_tokens"]) == sum(len(e["input_ids"]) for e in examples)
    assert int(packed["num_supervised"]) == int(padded["num_supervised"]) > 0
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        packed_loss = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], labels=packed["labels"],
                            use_cache=False).loss
        padded_loss = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=padded["labels"],
                            use_cache=False).loss
        rows = pack_rows([len(e["input_ids"]) for e in examples])
        for r, row in enumerate(rows):
            offset = 0
            for i in row:
                ids = torch.tensor([examples[i]["input_ids"]])
                alone = model(input_ids=ids).logits[0]
                together = logits[r, offset:offset + ids.shape[1]]
                assert torch.allclose(alone, together, atol=2e-4), (i, (alone - together).abs().max())
                assert int(packed["labels"][r, offset]) == IGNORE_INDEX
                offset += ids.shape[1]
    assert abs(float(packed_loss) - float(padded_loss)) < 1e-4


@pytest.mark.parametrize(
    ("training", "field"),
    [
        ({"packing": "sometimes"}, "training_config.packing"),
        ({"optim": "sgd"}, "training_config.optim"),
        ({"precision": "fp8"}, "training_config.precision"),
        ({"validation_split": 0.9}, "training_config.validation_split"),
        ({"eval_steps": -1}, "training_config.eval_steps"),
        ({"early_stopping_patience": -2}, "training_config.early_stopping_patience"),
        ({"save_steps": 5, "eval_steps": 2}, "training_config.save_steps"),
    ],
)
def test_new_training_fields_are_checked_by_name(training, field):
    with pytest.raises(ConfigError) as err:
        parse_job_config(None, training)
    assert field in err.value.errors


def test_validation_loss_best_checkpoint_early_stopping_and_fallbacks(demo_model_files, tmp_path):
    config = parse_job_config(
        {"rank": 8, "alpha": 16, "dropout": 0.0},
        {"max_steps": 12, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-3, "max_seq_length": 64,
         "warmup_steps": 0, "lr_scheduler": "constant", "save_steps": 2, "save_total_limit": 2,
         "early_stopping_patience": 2, "early_stopping_threshold": 0.05, "optimizer": "paged_adamw_8bit",
         "bf16": True}, {"enabled": False})
    # validation answers that the training pulls away from: its loss rises after the first evaluation
    held_out = [{"messages": [{"role": "user", "content": f"Question number {i}: "},
                              {"role": "assistant", "content": "Certainly. The answer is forty-two."}]} for i in range(4)]
    hooks = NullHooks()
    result = train(model_dir=demo_model_files[0], records=_records(16), eval_records=held_out, config=config,
                   output_dir=tmp_path, hooks=hooks)
    assert hooks.warnings[:2] == [
        "training_config.bf16: bf16 mixed precision is not supported at speed on this CPU; training in float32",
        "training_config.optimizer: paged optimizers need a CUDA GPU; on this CPU paged_adamw_8bit runs as adamw_8bit "
        "(not paged)"]
    assert all(("warning", w) in hooks.messages for w in hooks.warnings)
    losses = [e["eval_loss"] for e in hooks.evaluations]
    # the first evaluation sets the best; at step 4 it has not improved by more than 0.05, at step 6 it has
    # risen: two evaluations without improvement end the run at step 6 of 12
    assert losses[2] > min(losses[:2]) + 0.05, losses
    assert result.status == "completed" and result.stopped_early and result.steps == 6
    assert [e["step"] for e in hooks.evaluations] == [2, 4, 6]
    best_step = 2 if losses[0] <= losses[1] else 4
    assert hooks.evaluations[-1]["best_step"] == best_step and hooks.evaluations[-1]["best_eval_loss"] == min(losses)
    assert result.best_step == best_step and result.best_eval_loss == pytest.approx(min(losses))
    assert any(m.startswith("Stopped early at step 6 of 12") for level, m in hooks.messages if level == "warning")
    assert f"The adapter is the best checkpoint's: step {best_step}, validation loss" in " ".join(m for _, m in hooks.messages)
    # the best is kept beside the last one
    assert [int(p.name.split("-")[1]) for p in checkpoints(tmp_path)] == [best_step, 6]
    state = json.loads((checkpoints(tmp_path)[-1] / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    # the adapter saved at the end is the best checkpoint's, not the last step's
    from safetensors.torch import load_file

    final = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    best = load_file(str(checkpoints(tmp_path)[0] / "adapter_model.safetensors"))
    last = load_file(str(checkpoints(tmp_path)[-1] / "adapter_model.safetensors"))
    assert all((final[k] == best[k]).all() for k in final)
    assert any(not (final[k] == last[k]).all() for k in final)
    # the 8-bit AdamW really ran: its optimizer state is quantized
    import torch

    optimizer = torch.load(checkpoints(tmp_path)[-1] / "optimizer.pt", weights_only=False)
    quantized = [v for state in optimizer["state"].values()
                 for v in state.get("__bnb_optimizer_quant_state__", state).values()
                 if isinstance(v, torch.Tensor) and v.dtype == torch.uint8]
    assert quantized, optimizer["state"]
    assert result.supervised_tokens > 0 and result.tokens_seen > result.supervised_tokens
    assert result.peak_memory_bytes > 100 * 2**20


def test_a_checkpoint_on_request_and_pause_and_stop(demo_model_files, tmp_path):
    config = parse_job_config({"rank": 4, "alpha": 8}, {"max_steps": 20, "batch_size": 2, "gradient_accumulation_steps": 1,
                                                        "max_seq_length": 48, "save_steps": 100, "warmup_steps": 2},
                              {"enabled": False})
    hooks = NullHooks()
    hooks.commands = [set(), {"checkpoint"}, set(), {"pause"}]
    paused = train(model_dir=demo_model_files[0], records=_records(8), config=config, output_dir=tmp_path, hooks=hooks)
    assert paused.status == "paused" and paused.steps == 4
    assert [int(p.name.split("-")[1]) for p in checkpoints(tmp_path)] == [2, 4]
    hooks = NullHooks()
    hooks.commands = [set(), {"stop"}]
    stopped = train(model_dir=demo_model_files[0], records=_records(8), config=config, output_dir=tmp_path, hooks=hooks)
    assert ("info", "Resuming from checkpoint at step 4 (adapter, optimizer, scheduler and RNG state)") in hooks.messages
    assert stopped.status == "cancelled" and stopped.steps == 6 and stopped.adapter_dir is None
    assert [m["step"] for m in hooks.metrics] == [5, 6]
    assert [int(p.name.split("-")[1]) for p in checkpoints(tmp_path)] == [2, 4]  # a stop keeps nothing new
