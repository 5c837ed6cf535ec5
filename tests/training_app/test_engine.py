from __future__ import annotations

import pytest

from training_app.engine.config import ConfigError, parse_job_config
from training_app.engine.data import IGNORE_INDEX, encode_conversation


def test_defaults_are_complete():
    cfg = parse_job_config()
    assert cfg.lora.r == 16 and cfg.training.learning_rate == 2e-4 and cfg.qlora.enabled is False


@pytest.mark.parametrize(
    ("section", "values", "field"),
    [
        ("training", {"learning_rate": -1}, "training_config.learning_rate"),
        ("training", {"batch_size": "four"}, "training_config.batch_size"),
        ("training", {"max_seq_length": 4}, "training_config.max_seq_length"),
        ("training", {"epochs": 3}, "training_config.epochs"),
        ("lora", {"r": 0}, "lora_config.r"),
        ("lora", {"lora_dropout": 1.5}, "lora_config.lora_dropout"),
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
