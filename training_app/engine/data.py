"""Turning conversations into token ids with the loss on assistant tokens only. Django-free."""
from __future__ import annotations

from typing import Any, Iterable

IGNORE_INDEX = -100


def _ids(encoded: Any) -> list[int]:
    # transformers 5 returns a BatchEncoding from apply_chat_template(tokenize=True)
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)


def _template(tokenizer: Any, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt))


def _completion(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return bos + ids + eos


def encode_conversation(tokenizer: Any, messages: list[dict[str, str]], max_seq_length: int) -> dict[str, list[int]]:
    """Tokenize with the chat template; labels are -100 except on assistant replies (and their end
    token) whose `weight` is not 0. A lone assistant message is a completion: plain text, all learned."""
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        full = _completion(tokenizer, messages[0]["content"])
        labels = list(full)
        if tokenizer.bos_token_id is not None:
            labels[0] = IGNORE_INDEX
    elif getattr(tokenizer, "chat_template", None):
        full = _template(tokenizer, messages, generation_prompt=False)
        labels = [IGNORE_INDEX] * len(full)
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            start = len(_template(tokenizer, messages[:i], generation_prompt=True))
            end = len(_template(tokenizer, messages[: i + 1], generation_prompt=False))
            for pos in range(start, min(end, len(full))):
                labels[pos] = full[pos]
    else:  # base model without a chat template: plain prompt/response concatenation
        full, labels = [], []
        if tokenizer.bos_token_id is not None:
            full.append(tokenizer.bos_token_id)
            labels.append(IGNORE_INDEX)
        for message in messages:
            text = message["content"] + ("\n" if message["role"] != "assistant" else "")
            ids = tokenizer.encode(text, add_special_tokens=False)
            if message["role"] == "assistant" and tokenizer.eos_token_id is not None:
                ids = ids + [tokenizer.eos_token_id]
            full.extend(ids)
            learned = message["role"] == "assistant" and message.get("weight", 1) != 0
            labels.extend(ids if learned else [IGNORE_INDEX] * len(ids))
    full, labels = full[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": full, "labels": labels}


def encode_records(tokenizer: Any, records: Iterable[dict], max_seq_length: int) -> tuple[list[dict], int]:
    """Encode every record; returns (examples, skipped) where skipped ones had no response token left."""
    examples: list[dict] = []
    skipped = 0
    for record in records:
        example = encode_conversation(tokenizer, record["messages"], max_seq_length)
        if all(label == IGNORE_INDEX for label in example["labels"]):
            skipped += 1
            continue
        examples.append(example)
    return examples, skipped


class PaddingCollator:
    """Right-pads a batch; labels of padding are ignored."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(item["input_ids"]) for item in batch)
        input_ids, labels, attention = [], [], []
        for item in batch:
            pad = width - len(item["input_ids"])
            input_ids.append(item["input_ids"] + [self.pad_token_id] * pad)
            labels.append(item["labels"] + [IGNORE_INDEX] * pad)
            attention.append([1] * len(item["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention, dtype=torch.long),
        }
