"""Token statistics and length validation of normalized conversations. Django-free."""
from __future__ import annotations

from typing import Any


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def histogram(values: list[int], bins: int = 20) -> dict[str, list]:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = min(values), max(values)
    bins = max(1, min(bins, hi - lo + 1))
    width = max(1, -(-(hi - lo + 1) // bins))
    edges = [lo + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, (v - lo) // width)] += 1
    return {"edges": edges, "counts": counts}


def count_tokens(records: list[dict], tokenizer: Any | None) -> list[tuple[int, int]]:
    """(prompt_tokens, response_tokens) per record; one batched tokenizer call per side."""
    if tokenizer is None:
        return [(0, 0)] * len(records)
    prompts = ["\n".join(m["content"] for m in r["messages"] if m["role"] != "assistant") for r in records]
    responses = ["\n".join(m["content"] for m in r["messages"] if m["role"] == "assistant") for r in records]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    return [(len(p), len(r)) for p, r in zip(p_ids, r_ids)]


def token_statistics(records: list[dict], counts: list[tuple[int, int]], *, tokenizer_name: str | None) -> dict[str, Any]:
    totals = sorted(p + r for p, r in counts)
    turns = [sum(1 for m in r["messages"] if m["role"] in {"user", "assistant"}) for r in records]
    return {
        "num_examples": len(records),
        "tokenizer": tokenizer_name,
        "total_tokens": sum(totals),
        "prompt_tokens": sum(p for p, _ in counts),
        "response_tokens": sum(r for _, r in counts),
        "tokens_min": totals[0] if totals else 0,
        "tokens_p50": _percentile(totals, 0.5),
        "tokens_p95": _percentile(totals, 0.95),
        "tokens_max": totals[-1] if totals else 0,
        "tokens_mean": round(sum(totals) / len(totals), 1) if totals else 0,
        "token_histogram": histogram([p + r for p, r in counts]),
        "turns_mean": round(sum(turns) / len(turns), 2) if turns else 0,
        "turns_max": max(turns) if turns else 0,
        "turns_histogram": histogram(turns, bins=10),
    }
