"""The numbers a user decides on, each with its uncertainty: means with Student's t intervals,
shares with Wilson intervals, an exact sign test for "which model wins", rater agreement
(Cohen's kappa, Krippendorff's alpha) and speed spreads. Pure stdlib, Django-free.
"""
from __future__ import annotations

import math
from collections import Counter
from statistics import NormalDist
from typing import Any, Hashable, Mapping, Sequence

PREFERENCE_LABELS = ("base", "finetuned", "tie")
SIGNIFICANCE = 0.05


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (modified Lentz, Numerical Recipes)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on t_cdf (monotone, so it cannot miss)."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError("t_quantile needs 0 < p < 1 and df > 0")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """{"mean", "low", "high", "n", "sd", "confidence"}: the mean with a Student's t interval.
    n = 0: every number None; n = 1: the mean alone (an interval needs a spread, so low, high and
    sd are None)."""
    _check_confidence(confidence)
    n = len(values)
    out: dict[str, Any] = {"mean": None, "low": None, "high": None, "n": n, "sd": None, "confidence": confidence}
    if n == 0:
        return out
    mean = math.fsum(values) / n
    out["mean"] = mean
    if n == 1:
        return out
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(1 - (1 - confidence) / 2, n - 1) * sd / math.sqrt(n)
    out.update(sd=sd, low=mean - half, high=mean + half)
    return out


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes out of n: unlike the normal one it stays inside
    0-1 and is honest for small n or shares near 0 and 1. n = 0 gives (0.0, 1.0): no information."""
    _check_confidence(confidence)
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (0.0 if k == 0 else max(0.0, center - half)), (1.0 if k == n else min(1.0, center + half))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial sign test of wins vs losses under p = 0.5 (exact integers)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def preference_summary(labels: Sequence[str]) -> dict:
    """Who wins over "base" / "finetuned" / "tie" labels.

    {"n", "counts": {label: k}, "shares": {label: {"share", "low", "high"}} (Wilson 95%; share None
    when n = 0), "decisive": base + finetuned wins, "p_value": two-sided exact sign test of
    finetuned vs base wins with ties left out (None when no pair was decisive), "winner"}.
    winner is "finetuned" or "base" only when p_value < 0.05, else "no significant difference":
    a 6 to 4 split over ten prompts is not evidence that one model is better.
    """
    unknown = sorted({str(label) for label in labels} - set(PREFERENCE_LABELS))
    if unknown:
        raise ValueError(f"Unknown preference labels: {', '.join(unknown)}")
    counts = Counter(labels)
    n = len(labels)
    shares = {}
    for label in PREFERENCE_LABELS:
        low, high = wilson_interval(counts[label], n)
        shares[label] = {"share": counts[label] / n if n else None, "low": low, "high": high}
    base, finetuned = counts["base"], counts["finetuned"]
    p_value = sign_test(finetuned, base) if base + finetuned else None
    winner = "no significant difference"
    if p_value is not None and p_value < SIGNIFICANCE:
        winner = "finetuned" if finetuned > base else "base"
    return {"n": n, "counts": {label: counts[label] for label in PREFERENCE_LABELS}, "shares": shares,
            "decisive": base + finetuned, "p_value": p_value, "winner": winner}


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> dict:
    """Agreement of two raters on the same items beyond chance: {"kappa", "observed_agreement",
    "expected_agreement", "n"}. n = 0: all None. When both raters gave one and the same label to
    everything, chance agreement is 1 and the formula is 0/0; kappa is then defined as 1.0."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs two equally long lists, got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return {"kappa": None, "observed_agreement": None, "expected_agreement": None, "n": 0}
    count_a, count_b = Counter(a), Counter(b)
    observed = sum(x == y for x, y in zip(a, b)) / n
    chance = sum(count_a[label] * count_b[label] for label in count_a)  # in units of 1/n^2, exact
    expected = chance / (n * n)
    kappa = 1.0 if chance == n * n else (observed - expected) / (1 - expected)
    return {"kappa": kappa, "observed_agreement": observed, "expected_agreement": expected, "n": n}


def krippendorff_alpha_nominal(units: Mapping[Any, Mapping[Any, Hashable]]) -> dict:
    """Agreement of any number of raters, each rating any subset of units (unit -> rater -> label).

    {"alpha", "units" (used: 2+ ratings), "raters" (who rated a used unit), "pairable" (values in
    used units), "percent_agreement" (share of agreeing rater pairs within units)}. alpha = 1 -
    observed / expected disagreement from the coincidence matrix (Krippendorff 2011). With no
    usable unit alpha is None; when every value is the same label expected disagreement is 0 and
    alpha is defined as 1.0, as for cohen_kappa.
    """
    used = {u: list(r.values()) for u, r in units.items() if len(r) >= 2}
    raters = {rater for u in used for rater in units[u]}
    out: dict[str, Any] = {"alpha": None, "units": len(used), "raters": len(raters), "pairable": 0,
                           "percent_agreement": None}
    if not used:
        return out
    totals: Counter = Counter()  # n_c: each value's pairable count
    observed_disagreement = 0.0  # sum over c != k of the coincidences o_ck
    agreeing_pairs = all_pairs = 0
    for values in used.values():
        m = len(values)
        counts = Counter(values)
        totals.update(counts)
        observed_disagreement += (m * m - sum(c * c for c in counts.values())) / (m - 1)
        agreeing_pairs += sum(c * (c - 1) // 2 for c in counts.values())
        all_pairs += m * (m - 1) // 2
    pairable = sum(totals.values())
    expected_pairs = pairable * pairable - sum(c * c for c in totals.values())  # sum over c != k of n_c n_k
    alpha = 1.0 if expected_pairs == 0 else 1 - (pairable - 1) * observed_disagreement / expected_pairs
    out.update(alpha=alpha, pairable=pairable, percent_agreement=agreeing_pairs / all_pairs)
    return out


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(ordered) - 1) * q
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def spread(values: Sequence[float]) -> dict:
    """{"median", "p25", "p75", "min", "max", "mean", "n"} of e.g. tokens/s over runs; a median
    with quartiles says more than a mean when one run hit a cold cache. n = 0: all None."""
    n = len(values)
    if n == 0:
        return {"median": None, "p25": None, "p75": None, "min": None, "max": None, "mean": None, "n": 0}
    ordered = sorted(values)
    return {"median": _percentile(ordered, 0.5), "p25": _percentile(ordered, 0.25),
            "p75": _percentile(ordered, 0.75), "min": ordered[0], "max": ordered[-1],
            "mean": math.fsum(ordered) / n, "n": n}


def pct_diff(new: float | None, old: float | None) -> float | None:
    """(new - old) / old * 100; None when there is no baseline (old None or 0) or no new value."""
    if new is None or old is None or old == 0:
        return None
    return (new - old) / old * 100


def paired_bootstrap(base: Sequence[float], tuned: Sequence[float], *, resamples: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """How much the fine-tuned model's mean per-item score differs from the base's, with a paired
    percentile bootstrap interval: items are resampled with replacement and each keeps its pair of
    scores, so item difficulty cancels out. {"difference", "low", "high", "n", "resamples",
    "confidence"}; the same seed gives the same interval."""
    import numpy as np  # vectorized: 2000 resamples of 14,000 items in a fraction of a second

    _check_confidence(confidence)
    if len(base) != len(tuned):
        raise ValueError(f"paired_bootstrap needs two equally long lists, got {len(base)} and {len(tuned)}")
    n = len(base)
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one item")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    differences = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    batch = max(1, 4_000_000 // n)  # index matrices of at most ~32 MB
    for start in range(0, resamples, batch):
        stop = min(start + batch, resamples)
        means[start:stop] = differences[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.percentile(means, [100 * tail, 100 * (1 - tail)])
    return {"difference": float(differences.mean()), "low": float(low), "high": float(high), "n": n,
            "resamples": resamples, "confidence": confidence}


def mcnemar(base: Sequence[bool], tuned: Sequence[bool]) -> dict:
    """Exact McNemar test on paired right/wrong outcomes: only the discordant items count, b (base
    right, tuned wrong) against c (base wrong, tuned right), by the two-sided exact binomial test.
    {"b", "c", "p_value" (1.0 with no discordant item), "n"}."""
    if len(base) != len(tuned):
        raise ValueError(f"mcnemar needs two equally long lists, got {len(base)} and {len(tuned)}")
    b = sum(1 for x, y in zip(base, tuned) if x and not y)
    c = sum(1 for x, y in zip(base, tuned) if y and not x)
    return {"b": b, "c": c, "p_value": sign_test(c, b), "n": len(base)}


def change(difference: float, low: float, high: float) -> str:
    """"improved" when the whole interval is above 0, "regressed" when it is below, else "no_change"."""
    if low > 0:
        return "improved"
    if high < 0:
        return "regressed"
    return "no_change"
