"""Token statistics of normalized conversations. Django-free."""
from __future__ import annotations

from typing import Any, Iterable


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


def token_statistics(records: Iterable[dict[str, Any]], tokenizer: Any | None) -> dict[str, Any]:
    """Prompt/response/total token counts per record with the given HF tokenizer."""
    totals: list[int] = []
    prompt_tokens = 0
    response_tokens = 0
    turns: list[int] = []
    for record in records:
        messages = record["messages"]
        turns.append(sum(1 for m in messages if m["role"] in {"user", "assistant"}))
        if tokenizer is None:
            continue
        p = sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages if m["role"] != "assistant")
        r = sum(len(tokenizer.encode(m["content"], add_special_tokens=False)) for m in messages if m["role"] == "assistant")
        prompt_tokens += p
        response_tokens += r
        totals.append(p + r)
    ordered = sorted(totals)
    return {
        "num_examples": len(turns),
        "total_tokens": sum(totals),
        "prompt_tokens": prompt_tokens,
        "response_tokens": response_tokens,
        "tokens_min": ordered[0] if ordered else 0,
        "tokens_p50": _percentile(ordered, 0.5),
        "tokens_p95": _percentile(ordered, 0.95),
        "tokens_max": ordered[-1] if ordered else 0,
        "tokens_mean": round(sum(ordered) / len(ordered), 1) if ordered else 0,
        "token_histogram": histogram(totals),
        "turns_mean": round(sum(turns) / len(turns), 2) if turns else 0,
    }
