"""Dataset processing at scale: parse, validate, exact + MinHash near-duplicate detection and
token statistics with the demo tokenizer, on a generated Alpaca file with planted duplicates.

Prints the time of the Nexus pipeline, the time of a straightforward baseline run in the same
process (per-record loop: datasketch MinHash.update word-shingle by word-shingle, MinHashLSH
insert/query, the tokenizer called once per record), the ratio, and near-duplicate recall and
precision against the planted pairs.

    .venv/bin/python bench/datasets.py [--records 100000] [--skip-baseline]

Targets (issue 3): ours < 90 s for 100,000 records on 2 cores, recall >= 0.9, precision >= 0.95,
and at least 2x faster than the baseline.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets_app.engine.dedup import DedupConfig, find_duplicates, normalize, record_text  # noqa: E402
from datasets_app.engine.formats import parse_dataset_file  # noqa: E402
from datasets_app.engine.stats import count_tokens, token_statistics  # noqa: E402

MODEL_DIR = ROOT / "var/models/SmolLM2-135M-Instruct/hf"


def generate(n: int, path: Path, seed: int = 7) -> tuple[list[tuple[int, int]], int]:
    """n records: ~94% unique, ~3% exact copies, ~3% near copies: about 2% of the words replaced
    (at least one), plus case and punctuation noise that normalization must see through.
    Returns the planted near pairs (original line index, copy index) and the exact-copy count."""
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "po", "ru", "si", "ta", "vu", "ze") for b in range(300)]
    n_exact = n_near = int(n * 0.03)
    n_unique = n - n_exact - n_near
    rows = []
    for _ in range(n_unique):
        rows.append({"instruction": " ".join(rng.choices(vocab, k=rng.randint(8, 30))), "input": "",
                     "output": " ".join(rng.choices(vocab, k=rng.randint(20, 120)))})
    near_pairs = []
    for _ in range(n_exact):
        rows.append(dict(rows[rng.randrange(n_unique)]))
    for _ in range(n_near):
        src = rng.randrange(n_unique)
        words = rows[src]["output"].split()
        total = len(words) + len(rows[src]["instruction"].split())
        for _ in range(max(1, round(0.02 * total))):
            words[rng.randrange(len(words))] = rng.choice(vocab)
        output = " ".join(words)
        if rng.random() < 0.5:
            output = output.capitalize() + "."
        rows.append({**rows[src], "output": output})
        near_pairs.append((src, len(rows) - 1))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return near_pairs, n_exact


def ours(path: Path, tokenizer) -> tuple[float, dict, list[dict], object]:
    started = time.perf_counter()
    parsed = parse_dataset_file(path)
    counts = count_tokens(parsed.records, tokenizer)
    report = find_duplicates(parsed.records, DedupConfig())
    stats = token_statistics(parsed.records, counts, tokenizer_name="SmolLM2-135M-Instruct")
    return time.perf_counter() - started, stats, parsed.records, report


def baseline(path: Path, tokenizer, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3) -> tuple[float, set[tuple[int, int]]]:
    import hashlib

    from datasketch import MinHash, MinHashLSH

    started = time.perf_counter()
    records = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if not obj.get("instruction") or not obj.get("output"):
            continue
        records.append({"messages": [{"role": "user", "content": obj["instruction"]}, {"role": "assistant", "content": obj["output"]}]})
    seen: dict[str, int] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs: set[tuple[int, int]] = set()
    tokens = []
    for i, r in enumerate(records):
        text = normalize(record_text(r["messages"]))
        key = hashlib.sha1(text.encode()).hexdigest()
        if key in seen:
            continue
        seen[key] = i
        m = MinHash(num_perm=num_perm)
        words = text.split()
        for j in range(max(1, len(words) - shingle + 1)):
            m.update(" ".join(words[j:j + shingle]).encode())
        for other in lsh.query(m):
            pairs.add((other, i))
        lsh.insert(i, m)
        p = len(tokenizer.encode(r["messages"][0]["content"], add_special_tokens=False))
        a = len(tokenizer.encode(r["messages"][1]["content"], add_special_tokens=False))
        tokens.append(p + a)
    return time.perf_counter() - started, pairs


def score(report, near_pairs: list[tuple[int, int]]) -> tuple[float, float]:
    cluster_of = {}
    for n, cluster in enumerate(report.near_clusters):
        for i in cluster:
            cluster_of[i] = n
    found = sum(1 for a, b in near_pairs if a in cluster_of and cluster_of.get(a) == cluster_of.get(b))
    recall = found / len(near_pairs)
    # precision over the near-duplicate pairs we report: a pair is right when planted (either
    # direction, or linked through exact copies of the same original)
    planted = {frozenset(p) for p in near_pairs}
    exact_of = {}
    for n, cluster in enumerate(report.exact_clusters):
        for i in cluster:
            exact_of[i] = n
    right = wrong = 0
    for cluster in report.near_clusters:
        for x in range(len(cluster)):
            for y in range(x + 1, len(cluster)):
                a, b = cluster[x], cluster[y]
                if a in exact_of and exact_of.get(a) == exact_of.get(b):
                    continue  # exact copies inside a near cluster are counted as exact
                linked = frozenset((a, b)) in planted or any(
                    frozenset((o, b)) in planted or frozenset((a, o)) in planted
                    for o in report.exact_clusters[exact_of[a]] + report.exact_clusters[exact_of.get(b, exact_of[a])]
                ) if a in exact_of or b in exact_of else frozenset((a, b)) in planted
                right += linked
                wrong += not linked
    precision = right / max(right + wrong, 1)
    return recall, precision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL_DIR))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        near_pairs, n_exact = generate(args.records, path)
        print(f"{args.records:,} records ({path.stat().st_size / 1e6:.1f} MB), planted {n_exact:,} exact and {len(near_pairs):,} near duplicates")
        t_ours, stats, records, report = ours(path, tokenizer)
        recall, precision = score(report, near_pairs)
        summary = report.summary()
        print(f"nexus pipeline: {t_ours:6.1f} s  (exact dups {summary['exact_duplicates']:,}, near dups {summary['near_duplicates']:,}, "
              f"tokens {stats['total_tokens']:,}, p95 {stats['tokens_p95']})")
        print(f"near-duplicate recall {recall:.3f}, precision {precision:.3f} (targets >= 0.9 and >= 0.95)")
        print(f"target < 90 s: {'met' if t_ours < 90 else 'MISSED'}")
        if not args.skip_baseline:
            t_base, base_pairs = baseline(path, tokenizer)
            print(f"baseline loop:  {t_base:6.1f} s  ({len(base_pairs):,} near pairs)")
            print(f"ratio baseline/ours: {t_base / t_ours:.2f}x faster (target >= 2x)")


if __name__ == "__main__":
    main()
