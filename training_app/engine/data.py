"""Turning conversations into token ids with the loss on assistant tokens only. Django-free."""
from __future__ import annotations

import functools
import threading
from typing import Any, Iterable

IGNORE_INDEX = -100
_TRANSFORMERS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str) -> Any:
    """A model folder's tokenizer, loaded once per process (not for training, which changes its padding)."""
    # transformers resolves its names lazily, and two threads doing that for the first time at once
    # can get "cannot import name 'AutoTokenizer'" (the ASGI server runs views in a thread pool)
    with _TRANSFORMERS_LOCK:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)


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


def template_overhead(tokenizer: Any) -> tuple[int, int]:
    """Tokens the chat template adds: for one exchange, and for each further exchange."""
    u, a = {"role": "user", "content": ""}, {"role": "assistant", "content": ""}
    one = len(encode_conversation(tokenizer, [u, a], 1 << 20)["input_ids"])
    two = len(encode_conversation(tokenizer, [u, a, u, a], 1 << 20)["input_ids"])
    return one, two - one


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


def _extras(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
    """Counts the trainer reads and removes before the forward pass: real tokens and supervised ones."""
    import torch

    return {"num_tokens": torch.tensor(sum(len(x["input_ids"]) for x in batch)),
            "num_supervised": torch.tensor(sum(sum(1 for t in x["labels"][1:] if t != IGNORE_INDEX) for x in batch))}


COUNT_KEYS = ("num_tokens", "num_supervised")


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
            **_extras(batch),
        }


def pack_rows(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: indices grouped into rows no longer than the longest example."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, space in enumerate(free):
            if lengths[i] <= space:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows


def cu_seq_lens(lengths: list[int]) -> list[int]:
    """Where each example of a one-row batch starts, and the row's end: [0, n0, n0 + n1, ...]."""
    import itertools

    return list(itertools.accumulate(lengths, initial=0))


class PackingCollator:
    """Padding-free packing within a micro-batch: each example with position ids from 0, and the
    first label of every example ignored, so no example learns to predict the next one's start.
    The same examples make a step as without packing; only the padding is gone.

    With `one_row` (the model attends per example: engine/lean.py's varlen attention) all of the
    micro-batch is one row with no padding at all, and `cu_seq_lens_q` gives where each example
    starts. Otherwise the examples share rows as long as the longest example, and, with no
    attention mask, transformers builds a block-diagonal causal mask from the position ids
    (attention never crosses examples; on a CPU the hidden scores of a row are still computed,
    so rows stay short)."""

    def __init__(self, pad_token_id: int, one_row: bool = False):
        self.pad_token_id = pad_token_id
        self.one_row = one_row

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        lengths = [len(x["input_ids"]) for x in batch]
        width = sum(lengths) if self.one_row else max(lengths)
        input_ids, labels, positions = [], [], []
        for row in [list(range(len(batch)))] if self.one_row else pack_rows(lengths):
            ids: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            for i in row:
                ids += batch[i]["input_ids"]
                lab += [IGNORE_INDEX] + list(batch[i]["labels"][1:])
                pos += range(lengths[i])
            pad = width - len(ids)
            # the tail is a padding "example" of its own (positions from 0): nothing attends to it
            input_ids.append(ids + [self.pad_token_id] * pad)
            labels.append(lab + [IGNORE_INDEX] * pad)
            positions.append(pos + list(range(pad)))
        out = {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            **_extras(batch),
        }
        if self.one_row:
            out["cu_seq_lens_q"] = cu_seq_lens(lengths)  # a list: read on the host, never moved to a device
        return out


def make_collator(packing: str, pad_token_id: int, one_row: bool = False) -> PaddingCollator | PackingCollator:
    return PackingCollator(pad_token_id, one_row) if packing == "padding_free" else PaddingCollator(pad_token_id)


def split_validation(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded held-out fraction (at least one example, never all of them); the same on every resume."""
    import random

    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    k = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]
