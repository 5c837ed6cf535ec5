"""One benchmark on one model (a "side"), and base against fine-tuned on the same items.

A side runs the suite's items through lm-evaluation-harness (`harness`): multiple-choice by
log-likelihood, GSM8K by lm-eval's own exact-match filters, HumanEval and custom prompts by
generation that is then scored here (HumanEval in the sandbox, custom cases by their
evaluation_type). Every item's result is kept under its test case id, so base and fine-tuned are
compared item by item: a paired bootstrap interval for the difference of the scores and, for
right/wrong items, McNemar's exact test. Scores are percentages (0-100); `improvement` is the
difference in percentage points. Django-free."""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from evaluation_app.engine import harness
from evaluation_app.engine.stats import change, mcnemar, paired_bootstrap

# lm-eval's usual headline metric: accuracy for lettered choices and Winogrande's two sentences;
# length-normalized accuracy where the choices are free texts of different lengths
MC_METRIC = {"letters": "acc", "continuation": "acc_norm", "plain": "acc_norm"}


@dataclass(frozen=True)
class BenchConfig:
    """The design's BenchmarkConfig (10.3.2), checked by the service before it gets here."""

    benchmark_name: str
    num_samples: int | None = None
    num_few_shot: int = 5
    batch_size: int = 8
    max_tokens: int = 256
    temperature: float = 0.0
    include_reasoning: bool = False
    samples_per_problem: int = 1  # HumanEval: pass@k needs k samples per problem at temperature > 0

    def cache_part(self) -> dict[str, Any]:
        """What changes the numbers (batch_size does not)."""
        return {"num_samples": self.num_samples, "num_few_shot": self.num_few_shot, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "include_reasoning": self.include_reasoning,
                "samples_per_problem": self.samples_per_problem}


@dataclass
class Workload:
    """What one benchmark runs: its selected items and few-shot pool, the same for both sides."""

    key: str  # "mmlu", ..., or "custom:<id>"
    label: str
    kind: str  # multiple_choice | truthfulqa | gsm8k | code | custom
    metric: str
    style: str = "letters"
    items: list[dict] = field(default_factory=list)
    fewshot: list[dict] = field(default_factory=list)
    scoring: dict[str, Any] = field(default_factory=dict)  # custom sets
    general: bool = True  # a general-capability benchmark (regressions there weigh most)


@dataclass
class Side:
    score: float  # percent
    items: dict[str, dict]
    metrics: dict[str, Any]
    task_configs: dict[str, str]
    n_shot: int
    seconds: float
    notes: list[str] = field(default_factory=list)


Judge = Callable[[str, str, str], "bool | None"]


def _percent(value: float) -> float:
    return round(100.0 * value, 4)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def run_side(lm, work: Workload, config: BenchConfig, folder: Path, *, embedder=None, tone_judge: Judge | None = None,
             chat_template: bool = False, should_stop: Callable[[], bool] | None = None) -> Side:
    """Run `work` on the loaded LM `lm` in `folder` (task files written there)."""
    started = time.monotonic()
    shots = config.num_few_shot
    notes: list[str] = []
    name = "nexus_" + "".join(ch if ch.isalnum() else "_" for ch in work.key)
    configs: dict[str, str] = {}
    metrics: dict[str, Any] = {}

    if work.kind == "multiple_choice":
        spec = harness.mc_task(folder, name, work.items, work.fewshot[:shots], style=work.style)
        run = harness.run_task(lm, spec, num_fewshot=shots, should_stop=should_stop)
        items = harness.mc_item_results(run, metric="acc" if work.key == "winogrande" else MC_METRIC[work.style])
        configs[spec.name] = spec.yaml_text
        metrics = {k: v for k, v in run.metrics.items() if not k.startswith("alias")}
        score = _mean([r["score"] for r in items.values()])
    elif work.kind == "truthfulqa":
        score, items, metrics = _truthfulqa(lm, work, folder, name, shots, configs, should_stop)
    elif work.kind == "gsm8k":
        spec = harness.gsm8k_task(folder, name, work.items, work.fewshot[:shots], reasoning=config.include_reasoning,
                                  max_tokens=config.max_tokens, temperature=config.temperature)
        run = harness.run_task(lm, spec, num_fewshot=shots, should_stop=should_stop)
        items = harness.generation_item_results(run, filter_name="strict-match")
        flexible = harness.generation_item_results(run, filter_name="flexible-extract")
        for key, row in items.items():
            row["flexible_correct"] = flexible.get(key, {}).get("correct", False)
        configs[spec.name] = spec.yaml_text
        metrics = {"exact_match,strict-match": _mean([r["score"] for r in items.values()]),
                   "exact_match,flexible-extract": _mean([float(r["flexible_correct"]) for r in items.values()])}
        score = metrics["exact_match,strict-match"]
    elif work.kind == "code":
        if shots:
            notes.append(f"num_few_shot={shots} does not apply to HumanEval: 0 shots used")
        score, items, metrics = _humaneval(lm, work, config, folder, name, configs, should_stop)
        shots = 0
    elif work.kind == "custom":
        score, items, metrics = _custom(lm, work, config, folder, name, configs, embedder=embedder,
                                        tone_judge=tone_judge, chat_template=chat_template, should_stop=should_stop,
                                        notes=notes)
    else:
        raise ValueError(f"unknown benchmark kind {work.kind!r}")
    return Side(score=_percent(score), items=items, metrics=metrics, task_configs=configs, n_shot=shots,
                seconds=round(time.monotonic() - started, 3), notes=notes)


def _truthfulqa(lm, work: Workload, folder: Path, name: str, shots: int, configs: dict, should_stop):  # noqa: ANN001
    """MC1: the single true answer ranked first. MC2: the normalized probability mass on the true
    answers among all of them (TruthfulQA's two scores, as lm-eval defines them)."""
    spec1 = harness.mc_task(folder, name + "_mc1", work.items, work.fewshot[:shots], style="continuation")
    run1 = harness.run_task(lm, spec1, num_fewshot=shots, should_stop=should_stop)
    mc1 = harness.mc_item_results(run1, metric="acc")
    mc2_items = [{"id": i["id"], "question": i["question"], "choices": i["mc2_choices"],
                  "answer": i["mc2_labels"].index(1) if 1 in i["mc2_labels"] else 0, "category": i.get("category", "")}
                 for i in work.items]
    labels = {i["id"]: i["mc2_labels"] for i in work.items}
    spec2 = harness.mc_task(folder, name + "_mc2", mc2_items, [], style="continuation")
    run2 = harness.run_task(lm, spec2, num_fewshot=0, should_stop=should_stop)
    import math

    items: dict[str, dict] = {}
    for key, row in harness.mc_item_results(run2, metric="acc").items():
        probs = [math.exp(v) for v in row["loglikelihoods"]]
        true_mass = sum(p for p, label in zip(probs, labels[key]) if label)
        mc2 = true_mass / sum(probs) if sum(probs) > 0 else 0.0
        items[key] = {"score": mc2, "mc2": round(mc2, 6), "correct": mc1[key]["correct"],
                      "mc1": mc1[key]["correct"], "category": row["category"]}
    configs[spec1.name], configs[spec2.name] = spec1.yaml_text, spec2.yaml_text
    metrics = {"mc1": _mean([float(r["mc1"]) for r in items.values()]), "mc2": _mean([r["mc2"] for r in items.values()])}
    return metrics["mc2"], items, metrics


def _humaneval(lm, work: Workload, config: BenchConfig, folder: Path, name: str, configs: dict, should_stop):  # noqa: ANN001
    from evaluation_app.engine.sandbox import humaneval_program, pass_at_k, run_untrusted

    docs = [{"id": i["id"], "category": "", "query": i["prompt"], "reference": ""} for i in work.items]
    spec = harness.generate_task(folder, name, docs, max_tokens=config.max_tokens, temperature=config.temperature,
                                 until=harness.CODE_STOP, repeats=config.samples_per_problem)
    run = harness.run_task(lm, spec, num_fewshot=0, predict_only=True, should_stop=should_stop)
    configs[spec.name] = spec.yaml_text
    by_id = {i["id"]: i for i in work.items}
    items: dict[str, dict] = {}
    k_values = [k for k in (1, 10) if k <= config.samples_per_problem]
    for key, row in harness.generation_item_results(run).items():
        outcomes = []
        for completion in row["responses"]:
            if should_stop and should_stop():
                raise InterruptedError("stopped")
            result = run_untrusted(humaneval_program(by_id[key], completion))
            outcomes.append({"passed": result.passed, "status": result.status, "detail": result.detail[-300:]})
        n, c = len(outcomes), sum(o["passed"] for o in outcomes)
        items[key] = {"score": pass_at_k(n, c, 1), "correct": c > 0 if n == 1 else None, "passed": c, "samples": n,
                      "category": "", "completion": row["responses"][0] if row["responses"] else "",
                      "outcomes": outcomes}
    metrics = {f"pass@{k}": _mean([pass_at_k(r["samples"], r["passed"], k) for r in items.values()])
               for k in k_values}
    return metrics["pass@1"], items, metrics


def _custom(lm, work: Workload, config: BenchConfig, folder: Path, name: str, configs: dict, *, embedder,  # noqa: ANN001
            tone_judge, chat_template: bool, should_stop, notes: list[str]):  # noqa: ANN001
    from evaluation_app.engine.custom import score_case

    scoring = work.scoring
    items: dict[str, dict] = {}
    mc = [c for c in work.items if c["evaluation_type"] == "multiple_choice"]
    generated = [c for c in work.items if c["evaluation_type"] != "multiple_choice"]
    if mc:
        mc_items = [{"id": c["id"], "question": c["prompt"], "choices": c["choices"], "answer": c["answer"],
                     "category": c.get("category") or "multiple_choice"} for c in mc]
        spec = harness.mc_task(folder, name + "_mc", mc_items, [], style="letters")
        run = harness.run_task(lm, spec, num_fewshot=0, should_stop=should_stop)
        configs[spec.name] = spec.yaml_text
        for key, row in harness.mc_item_results(run, metric="acc").items():
            items[key] = {**row, "evaluation_type": "multiple_choice"}
    if generated:
        docs = [{"id": c["id"], "category": c.get("category") or c["evaluation_type"], "query": c["prompt"],
                 "reference": c.get("reference_answer", "")} for c in generated]
        spec = harness.generate_task(folder, name + "_gen", docs, max_tokens=config.max_tokens,
                                     temperature=config.temperature, until=harness.STOP_DEFAULT)
        run = harness.run_task(lm, spec, num_fewshot=0, predict_only=True, should_stop=should_stop,
                               chat_template=chat_template)
        configs[spec.name] = spec.yaml_text
        responses = harness.generation_item_results(run)
        threshold = float(scoring.get("similarity", {}).get("threshold", 0.8))
        for case in generated:
            response = (responses.get(case["id"], {}).get("responses") or [""])[0]
            scored = score_case(case, response, embedder=embedder, threshold=threshold, tone_judge=tone_judge)
            items[case["id"]] = {"score": scored["score"], "correct": scored["passed"], "response": response,
                                 "details": scored["details"], "evaluation_type": case["evaluation_type"],
                                 "category": case.get("category") or case["evaluation_type"]}
    if any(c.get("required_tone") for c in generated) and tone_judge is None:
        notes.append("required_tone was not checked: no judge connection was given")
    score, weights = weighted(items, scoring)
    for key, weight in weights.items():
        items[key]["weight"] = weight
    by_type: dict[str, list[float]] = defaultdict(list)
    for row in items.values():
        by_type[row["evaluation_type"]].append(row["score"])
    metrics = {"weighted_score": score, **{f"{t},mean": _mean(v) for t, v in by_type.items()}}
    return score, items, metrics


def weighted(items: dict[str, dict], scoring: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The set's score per its `scoring` weights (each type's mean, weighted over the types that
    have items), and each item's weight such that the weighted mean of item scores is that score:
    the paired bootstrap then resamples items with their weights."""
    from evaluation_app.engine.custom import weighted_score

    by_type: dict[str, list[str]] = defaultdict(list)
    for key, row in items.items():
        by_type[row["evaluation_type"]].append(key)
    score = weighted_score({t: [items[k]["score"] for k in keys] for t, keys in by_type.items()}, scoring)
    total = sum(float(scoring.get(t, {}).get("weight", 1.0)) for t in by_type)
    weights = {}
    for t, keys in by_type.items():
        share = float(scoring.get(t, {}).get("weight", 1.0)) / total if total else 0.0
        for key in keys:
            weights[key] = share * len(items) / len(keys)
    return score, weights


# -- base against fine-tuned ----------------------------------------------------------------------------


def categories(items: dict[str, dict]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for row in items.values():
        groups[row.get("category") or "all"].append(row["score"])
    return {name: {"score": _percent(_mean(values)), "n": len(values)} for name, values in sorted(groups.items())}


def compare(work: Workload, base: Side, tuned: Side | None, *, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The design's BenchmarkResult fields plus the interval, the test and the verdict."""
    result: dict[str, Any] = {
        "benchmark_name": work.key, "label": work.label, "metric": work.metric, "general": work.general,
        "base_model_score": base.score, "finetuned_score": tuned.score if tuned else None,
        "improvement": None, "relative_improvement": None, "num_samples": len(base.items),
        "change": None, "interval": None, "mcnemar": None,
    }
    per_category_base = categories(base.items)
    detailed: dict[str, Any] = {"categories": {}, "items": {}, "metrics": {"base": base.metrics}}
    if tuned is None:
        detailed["categories"] = {c: {"base": v["score"], "n": v["n"]} for c, v in per_category_base.items()}
        detailed["items"] = {k: {"base": _item_view(v)} for k, v in base.items.items()}
        result["detailed_results"] = detailed
        return result
    keys = [k for k in base.items if k in tuned.items]
    if len(keys) != len(base.items) or len(keys) != len(tuned.items):
        raise RuntimeError(f"{work.label}: base and fine-tuned were scored on different items "
                           f"({len(base.items)} and {len(tuned.items)}, {len(keys)} shared)")
    weights = [base.items[k].get("weight", 1.0) for k in keys]
    b = [base.items[k]["score"] * w for k, w in zip(keys, weights)]
    t = [tuned.items[k]["score"] * w for k, w in zip(keys, weights)]
    interval = paired_bootstrap(b, t, resamples=resamples, seed=seed)
    diff_points = tuned.score - base.score
    result.update(
        improvement=round(diff_points, 4),
        relative_improvement=round(100.0 * diff_points / base.score, 4) if base.score else None,
        interval={"low": round(100 * interval["low"], 4), "high": round(100 * interval["high"], 4),
                  "confidence": interval["confidence"], "resamples": interval["resamples"], "method": "paired bootstrap"},
        change=change(interval["difference"], interval["low"], interval["high"]),
    )
    if all(isinstance(base.items[k].get("correct"), bool) and isinstance(tuned.items[k].get("correct"), bool)
           for k in keys) and work.kind in ("multiple_choice", "truthfulqa", "gsm8k", "code"):
        result["mcnemar"] = mcnemar([base.items[k]["correct"] for k in keys], [tuned.items[k]["correct"] for k in keys])
    per_category_tuned = categories(tuned.items)
    for name, row in per_category_base.items():
        ids = [k for k in keys if (base.items[k].get("category") or "all") == name]
        cat = {"base": row["score"], "finetuned": per_category_tuned.get(name, {}).get("score"), "n": row["n"]}
        cat["improvement"] = round(cat["finetuned"] - cat["base"], 4) if cat["finetuned"] is not None else None
        if len(ids) >= 2:
            ci = paired_bootstrap([base.items[k]["score"] for k in ids], [tuned.items[k]["score"] for k in ids],
                                  resamples=min(resamples, 1000), seed=seed)
            cat["interval"] = {"low": round(100 * ci["low"], 4), "high": round(100 * ci["high"], 4)}
            cat["change"] = change(ci["difference"], ci["low"], ci["high"])
        detailed["categories"][name] = cat
    detailed["items"] = {k: {"base": _item_view(base.items[k]), "finetuned": _item_view(tuned.items[k])} for k in keys}
    detailed["metrics"]["finetuned"] = tuned.metrics
    result["detailed_results"] = detailed
    return result


def _item_view(row: dict) -> dict:
    """What a person reads per item: right or wrong, the score, the choice or the answer."""
    keep = ("score", "correct", "picked", "gold", "category", "extracted", "flexible_correct", "mc1", "mc2",
            "passed", "samples", "evaluation_type", "details", "weight")
    view = {k: row[k] for k in keep if k in row}
    for text_key in ("response", "completion"):
        if text_key in row:
            view[text_key] = row[text_key][:2000]
    if "responses" in row and "response" not in view:
        view["response"] = (row["responses"] or [""])[0][:2000]
    if "outcomes" in row:
        view["outcomes"] = [{"status": o["status"], "detail": o["detail"][-200:]} for o in row["outcomes"]]
    return view
