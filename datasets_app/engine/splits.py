"""Train/val/test splits that keep duplicates on one side, and contamination between two record
sets. Django-free."""
from __future__ import annotations

import random
from typing import Any

from datasets_app.engine.dedup import DedupConfig, find_duplicates, normalize, prompt_text

SPLITS = ("train", "val", "test")


def split_groups(records: list[dict], clusters: dict[str, list[list[int]]]) -> list[list[int]]:
    """Positions that must stay on one side: members of the same cluster (exact, near, same
    prompt; given as source indices, as a dataset's duplicate report keeps them)."""
    position = {r["source_index"]: n for n, r in enumerate(records)}
    parent = list(range(len(records)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for same_kind in clusters.values():
        for cluster in same_kind:
            members = [position[i] for i in cluster if i in position]
            for m in members[1:]:
                parent[find(m)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for n in range(len(records)):
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def assign_splits(records: list[dict], clusters: dict[str, list[list[int]]], fractions: dict[str, float],
                  seed: int) -> dict[str, list[dict]]:
    """Records per split (in source order), as close to `fractions` as whole groups allow; the
    same seed gives the same split."""
    groups = split_groups(records, clusters)
    random.Random(seed).shuffle(groups)
    targets = {k: v * len(records) for k, v in fractions.items()}
    parts: dict[str, list[dict]] = {k: [] for k in SPLITS}
    for group in sorted(groups, key=len, reverse=True) if max(map(len, groups)) > 1 else groups:
        # the split furthest below its target takes the whole group
        name = max(SPLITS, key=lambda k: (targets[k] - len(parts[k])) / max(targets[k], 1e-9) if targets[k] else -1)
        parts[name].extend(records[i] for i in group)
    return {name: sorted(rows, key=lambda r: r["source_index"]) for name, rows in parts.items()}


def contamination(mine: list[dict], theirs: list[dict], threshold: float | None = None) -> dict[str, Any]:
    """Records of `mine` that are exact or near duplicates of records in `theirs`, or share its prompts."""
    combined = mine + theirs
    report = find_duplicates(combined, DedupConfig(threshold=threshold) if threshold else DedupConfig())
    n = len(mine)
    pairs: dict[str, list[dict]] = {"exact": [], "near": [], "same_prompt": []}
    for kind, clusters in (("exact", report.exact_clusters), ("near", report.near_clusters),
                           ("same_prompt", report.overlap_clusters)):
        for cluster in clusters:
            a = [combined[i]["source_index"] for i in cluster if i < n]
            b = [combined[i]["source_index"] for i in cluster if i >= n]
            if a and b:
                pairs[kind].append({"dataset": a, "against": b, "sample": prompt_text(combined[cluster[0]]["messages"])[:160]})
    same_prompt = {normalize(prompt_text(r["messages"])) for r in theirs}
    contaminated = {i for kind in pairs for p in pairs[kind] for i in p["dataset"]}
    return {
        "contaminated_records": len(contaminated),
        "fraction": round(len(contaminated) / max(len(mine), 1), 4),
        "exact": pairs["exact"][:500], "near": pairs["near"][:500], "same_prompt": pairs["same_prompt"][:500],
        "checked_prompts": len(same_prompt),
    }
