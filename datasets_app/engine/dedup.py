"""Exact and near-duplicate detection (MinHash LSH) and instruction overlap. Django-free.

Near duplicates: word n-gram shingles (default 3 words) of the normalized text (lower case,
punctuation dropped) hashed with xxhash, MinHash signatures of `num_perm` (default 128)
universal hash permutations computed for all records at once with numpy, and LSH banding with
the (bands, rows) that datasketch chooses for the threshold (default Jaccard 0.8), weighted
against misses. Candidate pairs from the bands are verified on their exact shingle sets
(Jaccard >= threshold), then joined into clusters (union-find). The result lists clusters with their members so a user can see why.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.8
DEFAULT_SHINGLE = 3
DEFAULT_NUM_PERM = 128
MAX_BUCKET = 200  # members of one LSH bucket compared pairwise
_MERSENNE = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class DedupConfig:
    threshold: float = DEFAULT_THRESHOLD
    shingle_size: int = DEFAULT_SHINGLE
    num_perm: int = DEFAULT_NUM_PERM
    seed: int = 1


@dataclass
class DedupReport:
    exact_clusters: list[list[int]] = field(default_factory=list)
    near_clusters: list[list[int]] = field(default_factory=list)
    overlap_clusters: list[list[int]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def removable(self) -> set[int]:
        """Indices a user would drop to keep one record of every exact and near-duplicate cluster."""
        drop: set[int] = set()
        for cluster in self.exact_clusters + self.near_clusters:
            drop.update(sorted(cluster)[1:])
        return drop

    def summary(self) -> dict[str, int]:
        return {
            "exact_clusters": len(self.exact_clusters),
            "exact_duplicates": sum(len(c) - 1 for c in self.exact_clusters),
            "near_clusters": len(self.near_clusters),
            "near_duplicates": sum(len(c) - 1 for c in self.near_clusters),
            "overlap_clusters": len(self.overlap_clusters),
            "removable": len(self.removable()),
        }


def record_text(messages: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages if m["role"] != "assistant")


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups_of(keys: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


@functools.lru_cache(maxsize=32)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param

    # Weighted against false negatives: every candidate is verified on its exact shingle sets,
    # so a missed pair costs recall while an extra candidate only costs a set intersection.
    return _optimal_param(threshold, num_perm, 0.05, 0.95)


def shingle_hashes(normalized: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """All shingle hashes in one flat uint64 array, with each record's start offset."""
    import xxhash

    h = xxhash.xxh32_intdigest
    flat: list[int] = []
    starts = np.empty(len(normalized), dtype=np.int64)
    for i, text in enumerate(normalized):
        starts[i] = len(flat)
        words = text.split()
        if len(words) < size:
            flat.append(h(text.encode()))
        else:
            flat.extend(h(" ".join(words[j:j + size]).encode()) for j in range(len(words) - size + 1))
    return np.asarray(flat, dtype=np.uint64), starts


def minhash_signatures(hashes: np.ndarray, starts: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """(n_records, num_perm) uint32 signatures: min over shingles of (a*h + b) mod p, vectorized."""
    rng = np.random.RandomState(seed)
    a = rng.randint(1, (1 << 31) - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
    b = rng.randint(0, (1 << 31) - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
    sig = np.empty((len(starts), num_perm), dtype=np.uint32)
    chunk = max(1, 4_000_000 // num_perm)  # shingles per chunk, bounded memory
    n = len(hashes)
    pos = 0
    rec = 0
    bounds = np.append(starts, n)
    while rec < len(starts):
        # take whole records until the chunk is full
        end_rec = int(np.searchsorted(bounds, pos + chunk, side="right")) - 1
        end_rec = max(end_rec, rec + 1)
        lo, hi = int(bounds[rec]), int(bounds[end_rec])
        block = hashes[lo:hi]
        perm = ((block[:, None] * a[None, :] + b[None, :]) % _MERSENNE) & _MAX_HASH
        sig[rec:end_rec] = np.minimum.reduceat(perm, (bounds[rec:end_rec] - lo).astype(np.int64), axis=0).astype(np.uint32)
        rec, pos = end_rec, hi
    return sig


def near_duplicate_clusters(texts: list[str], config: DedupConfig) -> list[list[int]]:
    if len(texts) < 2:
        return []
    normalized = [normalize(t) for t in texts]
    hashes, starts = shingle_hashes(normalized, config.shingle_size)
    sig = minhash_signatures(hashes, starts, config.num_perm, config.seed)
    bands, rows = lsh_params(config.threshold, config.num_perm)
    uf = _UnionFind(len(texts))
    bounds = np.append(starts, len(hashes))
    sets: dict[int, np.ndarray] = {}

    def shingles(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = np.unique(hashes[bounds[i]:bounds[i + 1]])
        return sets[i]

    def jaccard(i: int, j: int) -> float:
        a, b = shingles(i), shingles(j)
        inter = len(np.intersect1d(a, b, assume_unique=True))
        return inter / (len(a) + len(b) - inter)

    for band in range(bands):
        part = np.ascontiguousarray(sig[:, band * rows:(band + 1) * rows])
        keys = part.view(np.dtype((np.void, part.dtype.itemsize * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts_of_runs = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        ends_of_runs = np.r_[starts_of_runs[1:], len(sorted_keys)]
        for lo, hi in zip(starts_of_runs, ends_of_runs):
            if hi - lo < 2:
                continue
            members = [int(m) for m in order[lo:hi][:MAX_BUCKET]]
            # every pair of the bucket: a false match between two true near duplicates must not hide them
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if uf.find(i) != uf.find(j) and jaccard(i, j) >= config.threshold:
                        uf.union(i, j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(texts)):
        clusters.setdefault(uf.find(i), []).append(i)
    return [c for c in clusters.values() if len(c) > 1]


def find_duplicates(records: list[dict], config: DedupConfig | None = None) -> DedupReport:
    """Clusters of record indices: exact (same normalized text), near (MinHash LSH, excluding
    pure exact pairs), and instruction overlap (same prompt, different answers)."""
    config = config or DedupConfig()
    texts = [record_text(r["messages"]) for r in records]
    # exact: the same text up to case and white space (punctuation matters: "2+2" is not "2-2")
    exact_keys = [hashlib.blake2b(" ".join(t.casefold().split()).encode(), digest_size=16).hexdigest() for t in texts]
    exact = _groups_of(exact_keys)
    # near duplicates among the distinct texts only; exact copies are reported as exact
    first_of: dict[str, int] = {}
    distinct = [i for i, k in enumerate(exact_keys) if first_of.setdefault(k, i) == i]
    near_local = near_duplicate_clusters([texts[i] for i in distinct], config)
    members: dict[str, list[int]] = {}
    for i, k in enumerate(exact_keys):
        members.setdefault(k, []).append(i)
    near = [sorted(i for j in c for i in members[exact_keys[distinct[j]]]) for c in near_local]
    prompts = [normalize(prompt_text(r["messages"])) for r in records]
    near_of = {i: n for n, c in enumerate(near) for i in c}
    overlap = []
    for group in _groups_of(prompts):
        if not prompts[group[0]] or len({exact_keys[i] for i in group}) < 2:
            continue
        if len({near_of.get(i, -1 - i) for i in group}) == 1:
            continue  # already one near-duplicate cluster
        overlap.append(group)
    return DedupReport(exact_clusters=exact, near_clusters=near, overlap_clusters=overlap,
                       config={"threshold": config.threshold, "shingle_size": config.shingle_size,
                               "num_perm": config.num_perm, "lsh_bands_rows": list(lsh_params(config.threshold, config.num_perm))})
