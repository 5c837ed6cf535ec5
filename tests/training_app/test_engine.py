from __future__ import annotations

import pytest

from training_app.engine.config import ConfigError, parse_job_config
from training_app.engine.data import IGNORE_INDEX, encode_conversation


def test_defaults_are_the_designs():
    """Section 5.3's LoRAConfig, TrainingConfig and QLoRAConfig defaults, field by field."""
    config = parse_job_config().as_dicts()
    lora, training, qlora = config["lora_config"], config["training_config"], config["qlora_config"]
    assert {k: lora[k] for k in ("rank", "alpha", "dropout", "target_modules", "bias")} == {
        "rank": 32, "alpha": 64, "dropout": 0.05, "bias": "none",
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert {k: training[k] for k in ("learning_rate", "batch_size", "gradient_accumulation_steps", "num_epochs",
                                     "max_steps", "warmup_steps", "weight_decay", "optimizer", "lr_scheduler",
                                     "max_seq_length", "fp16", "bf16")} == {
        "learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation_steps": 4, "num_epochs": 3, "max_steps": None,
        "warmup_steps": 100, "weight_decay": 0.01, "optimizer": "adamw_8bit", "lr_scheduler": "cosine",
        "max_seq_length": 2048, "fp16": False, "bf16": True}
    assert qlora == {"enabled": True, "bits": 4, "quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    # no PEFT or transformers spelling is stored
    assert not {"r", "lora_alpha", "lora_dropout", "optim", "lr_scheduler_type", "precision"} & {*lora, *training}


def test_peft_and_transformers_spellings_are_aliases():
    config = parse_job_config(
        {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1},
        {"optim": "adamw_torch", "lr_scheduler_type": "linear", "warmup_ratio": 0.1, "precision": "fp16",
         "max_steps": -1, "num_train_epochs": 2, "per_device_train_batch_size": 2},
        {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False})
    lc, tc, qc = config.lora, config.training, config.qlora
    assert (lc.rank, lc.alpha, lc.dropout) == (8, 16, 0.1)
    assert (tc.optimizer, tc.lr_scheduler, tc.fp16, tc.bf16, tc.max_steps) == ("adamw_torch", "linear", True, False, None)
    assert (tc.warmup_ratio, tc.warmup_steps, tc.num_epochs, tc.batch_size) == (0.1, None, 2, 2)
    assert (qc.quant_type, qc.double_quant) == ("fp4", False)


@pytest.mark.parametrize(
    ("section", "values", "field", "names"),
    [
        ("lora", {"r": 8, "rank": 16}, "lora_config.rank", ("lora_config.r", "lora_config.rank")),
        ("lora", {"alpha": 8, "lora_alpha": 16}, "lora_config.alpha", ("lora_config.alpha", "lora_config.lora_alpha")),
        ("training", {"optim": "adamw_torch", "optimizer": "adamw_8bit"}, "training_config.optimizer",
         ("training_config.optim", "training_config.optimizer")),
        ("training", {"lr_scheduler": "linear", "lr_scheduler_type": "cosine"}, "training_config.lr_scheduler",
         ("training_config.lr_scheduler", "training_config.lr_scheduler_type")),
        ("training", {"warmup_steps": 10, "warmup_ratio": 0.1}, "training_config.warmup_steps",
         ("training_config.warmup_steps", "training_config.warmup_ratio")),
        ("training", {"precision": "fp16", "bf16": False}, "training_config.precision",
         ("training_config.precision", "training_config.bf16")),
        ("training", {"fp16": True, "bf16": True}, "training_config.fp16", ("training_config.fp16", "training_config.bf16")),
    ],
)
def test_two_spellings_of_one_setting_are_refused_naming_both(section, values, field, names):
    with pytest.raises(ConfigError) as err:
        parse_job_config(**{section: values})
    assert field in err.value.errors
    assert all(name in err.value.errors[field] for name in names), err.value.errors


def test_unknown_field_lists_the_design_names_first():
    with pytest.raises(ConfigError) as err:
        parse_job_config(None, {"epochs": 3})
    message = err.value.errors["training_config.epochs"]
    allowed = message.split("allowed: ")[1].split(", ")
    assert allowed[:12] == ["learning_rate", "batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps",
                            "warmup_steps", "weight_decay", "optimizer", "lr_scheduler", "max_seq_length", "fp16", "bf16"]
    assert "optim (optimizer)" in message and "lr_scheduler_type (lr_scheduler)" in message


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("training", {"learning_rate": -1}, "training_config.learning_rate"),
        ("training", {"batch_size": "four"}, "training_config.batch_size"),
        ("training", {"max_seq_length": 4}, "training_config.max_seq_length"),
        ("training", {"epochs": 3}, "training_config.epochs"),
        ("lora", {"rank": 0}, "lora_config.rank"),
        ("lora", {"r": 0}, "lora_config.rank"),  # a range error under an alias names the design's field...
        ("lora", {"r": "eight"}, "lora_config.r"),  # ...a type error the key as given
        ("lora", {"dropout": 1.5}, "lora_config.dropout"),
        ("training", {"warmup_steps": -1}, "training_config.warmup_steps"),
        ("training", {"optimizer": "sgd"}, "training_config.optimizer"),
        ("lora", {"target_modules": []}, "lora_config.target_modules"),
        ("qlora", {"bits": 8}, "qlora_config.bits"),
    ],
)
def test_bad_values_name_the_field(section, values, field):
    with pytest.raises(ConfigError) as err:
        parse_job_config(**{section: values})
    assert field in err.value.errors
    assert str(err.value).startswith(field)


def test_loss_is_only_on_assistant_tokens(demo_model_files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    messages = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Arr, four!"}]
    ex = encode_conversation(tok, messages, max_seq_length=512)
    learned = [t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX]
    text = tok.decode(learned)
    assert text.startswith("Arr, four!")
    assert "2+2" not in text and "user" not in text
    assert tok.convert_tokens_to_ids("<|im_end|>") in learned[-2:]  # the model learns to stop


def test_truncation_keeps_lengths_aligned(demo_model_files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    messages = [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "answer"}]
    ex = encode_conversation(tok, messages, max_seq_length=32)
    assert len(ex["input_ids"]) == len(ex["labels"]) == 32
    assert all(label == IGNORE_INDEX for label in ex["labels"])  # the response fell beyond the limit


def test_assistant_messages_with_weight_0_are_not_learned(demo_model_files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bad old answer", "weight": 0},
                {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Good new answer", "weight": 1}]
    ex = encode_conversation(tok, messages, max_seq_length=512)
    learned = tok.decode([t for t, label in zip(ex["input_ids"], ex["labels"]) if label != IGNORE_INDEX])
    assert "Good new answer" in learned and "Bad old answer" not in learned


def test_a_completion_is_plain_text_and_fully_learned(demo_model_files):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_model_files[0]))
    ex = encode_conversation(tok, [{"role": "assistant", "content": "Once upon a time"}], max_seq_length=512)
    text = tok.decode(ex["input_ids"])
    assert "Once upon a time" in text
    assert "assistant" not in text and "system" not in text  # no chat template around plain text
    assert sum(label != IGNORE_INDEX for label in ex["labels"]) >= len(tok.encode("Once upon a time", add_special_tokens=False))


def test_the_time_estimate_cuts_each_example_at_max_seq_length():
    from training_app.engine.config import TrainingConfig
    from training_app.engine.estimate import estimate_time

    def tokens(total: int, **training) -> int:
        return estimate_time(total_tokens=total, num_examples=10, num_usable=8, template_tokens=20,
                             training=TrainingConfig(**{"num_epochs": 2, **training}), tokens_per_second=100.0)["tokens"]

    assert tokens(1_000) == (100 + 20) * 8 * 2  # content plus the chat template, usable records only
    assert tokens(100_000, max_seq_length=512) == 512 * 8 * 2  # the trainer cuts longer examples
    assert tokens(100_000, max_seq_length=512, max_steps=5, batch_size=2, gradient_accumulation_steps=3) == 512 * 6 * 5
    assert estimate_time(total_tokens=1_000, num_examples=10, num_usable=8, template_tokens=20, training=TrainingConfig(),
                         tokens_per_second=None)["available"] is False


def test_checkpoints_are_read_from_their_trainer_state(tmp_path):
    import json

    from training_app.engine.checkpoints import checkpoint_list, checkpoint_losses, copy_adapter_files, latest_checkpoint

    for step, history in ((2, [{"loss": 2.5}]), (4, [{"loss": 2.5}, {"loss": 1.5, "eval_loss": 1.8}, {"loss": 1.25}])):
        folder = tmp_path / "trainer" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        best = str(tmp_path / "trainer" / "checkpoint-2")
        (folder / "trainer_state.json").write_text(json.dumps({"log_history": history, "best_model_checkpoint": best}))
        (folder / "adapter_config.json").write_text("{}")
        (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (tmp_path / "trainer" / "checkpoint-6").mkdir()  # being written: no trainer state yet
    assert latest_checkpoint(tmp_path).name == "checkpoint-4"
    assert checkpoint_losses(latest_checkpoint(tmp_path)) == (1.25, 1.8)
    listed = checkpoint_list(tmp_path)
    assert [(c["step"], c["is_best"], c["has_optimizer_state"]) for c in listed] == [(2, True, False), (4, False, False)]
    out = tmp_path / "adapter"
    out.mkdir()
    copy_adapter_files(latest_checkpoint(tmp_path), out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
