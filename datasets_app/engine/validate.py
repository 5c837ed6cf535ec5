"""Validation of parsed records: token counts, length and language problems, duplicates and
statistics, as the normalized dataset keeps them. Django-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from datasets_app.engine.dedup import DedupConfig, find_duplicates, record_text
from datasets_app.engine.formats import ParsedDataset, RecordProblem
from datasets_app.engine.stats import count_tokens, token_statistics

MAX_LISTED_CLUSTERS = 2_000


@dataclass
class ValidationConfig:
    max_tokens: int | None = None  # with the chat template's tokens; None: no upper limit
    min_tokens: int = 1
    languages: list[str] = field(default_factory=list)  # empty: any language
    dedup: DedupConfig = field(default_factory=DedupConfig)


@dataclass
class ValidationReport:
    records: list[dict]  # the valid records, each with its tokens, prompt_tokens and response_tokens
    problems: list[RecordProblem]  # parse problems and validation problems, in record order
    statistics: dict[str, Any] = field(default_factory=dict)
    duplicates: dict[str, Any] = field(default_factory=dict)


def _where(record: dict) -> str:
    return f"line {record['source_line']}" if record.get("source_line") else f"record {record['source_index']}"


def _length_problems(records: list[dict], counts: list[tuple[int, int]], *, min_tokens: int, max_tokens: int | None,
                     overhead: tuple[int, int]) -> tuple[list[dict], list[tuple[int, int]], list[RecordProblem]]:
    """Too long counts what training sees: content plus the chat template's tokens."""
    kept, kept_counts, problems = [], [], []
    for record, (p, r) in zip(records, counts):
        total = p + r
        exchanges = max(1, sum(1 for m in record["messages"] if m["role"] == "assistant"))
        with_template = total + overhead[0] + (exchanges - 1) * overhead[1]
        if max_tokens and with_template > max_tokens:
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "too_long",
                                          f"{_where(record)}: {with_template} tokens with the chat template, more than the "
                                          f"maximum of {max_tokens}"))
        elif total < min_tokens:
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "too_short",
                                          f"{_where(record)}: {total} tokens, fewer than the minimum of {min_tokens}"))
        else:
            kept.append(record)
            kept_counts.append((p, r))
    return kept, kept_counts, problems


def _language_problems(records: list[dict], counts: list[tuple[int, int]], allowed: list[str]
                       ) -> tuple[list[dict], list[tuple[int, int]], list[RecordProblem]]:
    from datasets_app.engine.language import language_problem

    kept, kept_counts, problems = [], [], []
    for record, count in zip(records, counts):
        reason = language_problem(record["messages"], allowed)
        if reason:
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "language",
                                          f"{_where(record)}: {reason}"))
        else:
            kept.append(record)
            kept_counts.append(count)
    return kept, kept_counts, problems


def _clusters_for_display(records: list[dict], clusters: list[list[int]]) -> list[dict]:
    out = []
    for cluster in clusters[:MAX_LISTED_CLUSTERS]:
        members = [records[i] for i in cluster]
        out.append({
            "members": [m["source_index"] for m in members],
            "lines": [m.get("source_line") for m in members],
            "samples": [record_text(m["messages"])[:160] for m in members[:5]],
        })
    return out


def validate_records(parsed: ParsedDataset, tokenizer: Any | None, config: ValidationConfig, *,
                     tokenizer_name: str | None = None,
                     progress: Callable[[int, str], None] = lambda percent, stage: None) -> ValidationReport:
    """Count tokens with `tokenizer` (None: no counts, so lengths go unchecked), leave out records
    that are too long, too short or in another language, and find duplicates among the rest. A
    report without records stops before the duplicate search."""
    from training_app.engine.data import template_overhead

    min_tokens, max_tokens = config.min_tokens, config.max_tokens
    counts = count_tokens(parsed.records, tokenizer)
    overhead = (0, 0)
    if tokenizer is None:
        min_tokens, max_tokens = 0, None
    else:
        overhead = template_overhead(tokenizer)
    progress(50, "tokens counted")
    records, counts, problems = _length_problems(parsed.records, counts, min_tokens=min_tokens, max_tokens=max_tokens,
                                                 overhead=overhead)
    if config.languages:
        records, counts, language_problems = _language_problems(records, counts, config.languages)
        problems += language_problems
    problems = sorted(parsed.problems + problems, key=lambda p: p.index)
    if not records:
        return ValidationReport(records=[], problems=problems)
    report = find_duplicates(records, config.dedup)
    progress(80, "duplicates found")
    stats = token_statistics(records, counts, tokenizer_name=tokenizer_name)
    by_category: dict[str, int] = {}
    for p in problems:
        by_category[p.category] = by_category.get(p.category, 0) + 1
    stats.update({
        "total_records": parsed.total_records,
        "valid": len(records),
        "invalid": len(problems),
        "invalid_by_category": by_category,
        "duplicates": report.summary(),
        "min_tokens": min_tokens,
        "max_tokens": max_tokens,
    })
    duplicates = {
        "config": report.config,
        "summary": report.summary(),
        "exact": _clusters_for_display(records, report.exact_clusters),
        "near": _clusters_for_display(records, report.near_clusters),
        "overlap": _clusters_for_display(records, report.overlap_clusters),
        "removable": sorted(records[i]["source_index"] for i in report.removable()),
        # every cluster in full (record source indices); the lists above are trimmed for display
        "clusters": {kind: [[records[i]["source_index"] for i in c] for c in clusters] for kind, clusters in
                     (("exact", report.exact_clusters), ("near", report.near_clusters), ("overlap", report.overlap_clusters))},
    }
    for record, (p, r) in zip(records, counts):
        record["tokens"], record["prompt_tokens"], record["response_tokens"] = p + r, p, r
    return ValidationReport(records=records, problems=problems, statistics=stats, duplicates=duplicates)
