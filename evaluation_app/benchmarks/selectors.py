"""Benchmark reads: jobs and their results as the design's BenchmarkJob / BenchmarkResult, the
suites with their data status and measured time per item, custom sets, and the evaluation
summary of an adapter (10.9) with the recommendation rule. Reads never change anything."""
from __future__ import annotations

from statistics import median
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from evaluation_app.engine import suites as suite_registry
from evaluation_app.engine.stats import preference_summary
from evaluation_app.models import BenchmarkJob, BenchmarkResult, CustomBenchmark
from nexus.teams import get_for_user, visible_to


def benchmark_job_list(*, user, team=None, adapter_id: int | None = None) -> QuerySet[BenchmarkJob]:
    qs = visible_to(BenchmarkJob.objects.select_related("base_model", "adapter"), user)
    if adapter_id is not None:
        qs = qs.filter(adapter_id=adapter_id)
    return qs.filter(team=team) if team is not None else qs


def benchmark_job_get(*, user, pk: int, write: bool = False) -> BenchmarkJob:
    return get_for_user(BenchmarkJob.objects.select_related("team", "base_model", "adapter"), user, pk=pk, write=write)


def custom_benchmark_list(*, user, team=None) -> QuerySet[CustomBenchmark]:
    qs = visible_to(CustomBenchmark.objects.all(), user)
    return qs.filter(team=team) if team is not None else qs


def custom_benchmark_get(*, user, pk: int, write: bool = False) -> CustomBenchmark:
    return get_for_user(CustomBenchmark.objects.select_related("team"), user, pk=pk, write=write)


def result_view(row: BenchmarkResult, *, items: bool = True) -> dict[str, Any]:
    """The design's BenchmarkResult, plus its interval, test, verdict and provenance."""
    detailed = dict(row.detailed_results or {})
    if not items:
        detailed.pop("items", None)
    return {"benchmark_name": row.benchmark_name, "label": row.label, "metric": row.metric, "general": row.general,
            "base_model_score": row.base_model_score, "finetuned_score": row.finetuned_score,
            "improvement": row.improvement, "relative_improvement": row.relative_improvement,
            "num_samples": row.num_samples, "interval": row.interval, "change": row.change or None,
            "mcnemar": row.mcnemar, "detailed_results": detailed, "provenance": row.provenance,
            "score_unit": "percent", "improvement_unit": "percentage points"}


def _averages(rows: list[BenchmarkResult]) -> dict[str, Any]:
    if not rows:
        return {"base_model_avg_score": None, "finetuned_avg_score": None, "improvement_percentage": None}
    base = sum(r.base_model_score for r in rows) / len(rows)
    tuned_rows = [r for r in rows if r.finetuned_score is not None]
    tuned = sum(r.finetuned_score for r in tuned_rows) / len(tuned_rows) if tuned_rows else None
    return {"base_model_avg_score": round(base, 4), "finetuned_avg_score": round(tuned, 4) if tuned is not None else None,
            "improvement_percentage": round(tuned - base, 4) if tuned is not None else None}


def benchmark_job_view(job: BenchmarkJob, *, items: bool = False) -> dict[str, Any]:
    """The design's BenchmarkJob: `results` maps each benchmark to its BenchmarkResult."""
    rows = list(job.results.all())
    return {"id": job.pk, "team": job.team_id, "name": job.name, "base_model": job.base_model.name,
            "adapter_id": job.adapter_id, "benchmarks": job.benchmarks, "backend": job.backend,
            "status": job.status, "progress": job.progress, "stage": job.stage, "current": job.current,
            "error": job.error, "worker": job.worker, "lm_eval_version": job.lm_eval_version,
            "self_check": job.self_check, "judge": job.label if (job.model or job.deployment_id) else None,
            "results": {r.benchmark_name: result_view(r, items=items) for r in rows}, **_averages(rows),
            "created_at": job.created_at, "started_at": job.started_at, "completed_at": job.completed_at,
            "updated_at": job.updated_at}


def _seconds_per_item(name: str) -> dict[str, Any] | None:
    """Measured on this deployment: the median seconds per item per model of the latest runs of
    this benchmark that actually ran (cached base sides are not timings)."""
    rows = (BenchmarkResult.objects.filter(benchmark_name=name, num_samples__gt=0)
            .order_by("-created_at").values_list("provenance", "num_samples")[:10])
    per_item = []
    for provenance, n in rows:
        seconds = (provenance or {}).get("seconds") or {}
        for side in ("base", "finetuned"):
            if side == "base" and provenance.get("base_cached"):
                continue
            if seconds.get(side):
                per_item.append(seconds[side] / n)
    if not per_item:
        return None
    return {"seconds_per_item_per_model": round(median(per_item), 4), "measured_runs": len(per_item)}


def suites_view(*, user, team=None) -> list[dict[str, Any]]:
    """GET /eval/benchmark/suites: the design's built-in suites and the team's custom sets."""
    from evaluation_app.benchmarks.services import data_dir

    out = []
    for suite in suite_registry.suites():
        installed = suite_registry.installed(suite, data_dir())
        size = len(suite_registry.load_items(suite, data_dir())) if installed else None
        out.append({"name": suite.name, "label": suite.label, "kind": suite.kind, "metric": suite.metric,
                    "description": suite.description, "installed": installed, "size": size,
                    "source": suite_registry.provenance(suite, data_dir()) if installed else None,
                    "install": None if installed else suite_registry.install_hint(suite),
                    "estimate": _estimate(suite.name, size)})
    for custom in custom_benchmark_list(user=user, team=team):
        size = len(custom.test_cases)
        out.append({"name": custom.key, "label": f"Custom: {custom.name}", "kind": "custom",
                    "metric": "weighted score", "description": custom.description, "installed": True, "size": size,
                    "custom_benchmark_id": custom.pk, "team": custom.team_id, "source": None, "install": None,
                    "estimate": _estimate(custom.key, size)})
    return out


def _estimate(name: str, size: int | None) -> dict[str, Any]:
    measured = _seconds_per_item(name)
    if measured is None or size is None:
        return {"seconds_per_item_per_model": None, "full_run_seconds": None,
                "note": "no run of this benchmark measured on this deployment yet"}
    per = measured["seconds_per_item_per_model"]
    return {**measured, "full_run_seconds": round(per * size * 2, 1),
            "note": "base and fine-tuned, from the median time per item of recent runs here"}


# -- the evaluation summary (10.9) ------------------------------------------------------------------------

RULE = (
    "regression: a general benchmark (not the team's own set) whose 95% paired-bootstrap interval of the "
    "change lies wholly below zero, or people or the judge preferring the base model significantly "
    "(exact sign test p < 0.05). deploy: no regression and at least one significant gain (a benchmark "
    "whose interval lies wholly above zero, or a significant preference for the fine-tuned model). "
    "needs_work: everything else: no significant difference anywhere, or nothing measured yet. Changes "
    "inside their interval count as no change."
)


def _latest_results(adapter) -> list[BenchmarkResult]:  # noqa: ANN001
    """The newest result of each benchmark over the adapter's completed-or-partial jobs."""
    seen, out = set(), []
    for row in (BenchmarkResult.objects.filter(job__adapter=adapter, finetuned_score__isnull=False)
                .select_related("job").order_by("-created_at")):
        if row.benchmark_name not in seen:
            seen.add(row.benchmark_name)
            out.append(row)
    return sorted(out, key=lambda r: (not r.general, r.label))


def _human(adapter) -> dict[str, Any]:  # noqa: ANN001
    """Preferences over the adapter's sessions that may be shown (blind ones only once revealed)."""
    from evaluation_app.models import ComparisonSession
    from evaluation_app.selectors import _human_labels, session_revealed

    labels, sessions = [], 0
    for session in ComparisonSession.objects.filter(adapter=adapter):
        if not session_revealed(session=session):
            continue
        sessions += 1
        labels += [label for unit in _human_labels(session).values() for label in unit.values()]
    summary = preference_summary(labels)
    return {"sessions": sessions, **summary}


def _judge(adapter) -> dict[str, Any] | None:  # noqa: ANN001
    from evaluation_app.models import JudgeEvaluation, JudgeRun
    from evaluation_app.selectors import session_revealed

    verdicts = []
    runs = 0
    for run in JudgeRun.objects.filter(session__adapter=adapter, status="completed").select_related("session"):
        if run.session.blind and not session_revealed(session=run.session):
            continue
        runs += 1
        verdicts += list(run.evaluations.filter(status=JudgeEvaluation.Status.DONE)
                         .values_list("judge_verdict", flat=True))
    if not runs:
        return None
    return {"runs": runs, **preference_summary([v for v in verdicts if v in ("base", "finetuned", "tie")])}


def _speed(adapter) -> dict[str, Any] | None:  # noqa: ANN001
    from evaluation_app.models import PerformanceTest

    test = PerformanceTest.objects.filter(adapter=adapter, status="completed").order_by("-completed_at").first()
    if test is None or not test.comparison:
        return None
    overall = test.comparison.get("overall") or {}
    return {"performance_test_id": test.pk, "tokens_per_second": overall.get("tokens_per_second"),
            "peak_memory_mb": test.comparison.get("peak_memory_mb")}


def recommend(results: list[dict[str, Any]], human: dict[str, Any], judge: dict[str, Any] | None
              ) -> tuple[str, list[str], list[str]]:
    """The written-down rule (RULE) over benchmark verdicts and preferences."""
    improvements, regressions = [], []
    general_regressed = False
    for r in results:
        if r["change"] == "improved":
            improvements.append(f"{r['label']}: {r['improvement']:+.1f} points (95% CI {r['interval']['low']:+.1f} to "
                                f"{r['interval']['high']:+.1f}, n={r['num_samples']})")
        elif r["change"] == "regressed":
            general_regressed |= r["general"]
            regressions.append(f"{r['label']}: {r['improvement']:+.1f} points (95% CI {r['interval']['low']:+.1f} to "
                               f"{r['interval']['high']:+.1f}, n={r['num_samples']})"
                               + ("" if r["general"] else " (the team's own set)"))
    preferred_base = False
    for what, pref in (("People", human), ("The judge", judge)):
        if not pref or not pref.get("decisive"):
            continue
        counts = pref["counts"]
        line = (f"{what} preferred the fine-tuned model {counts['finetuned']} times and the base "
                f"{counts['base']} times ({counts['tie']} ties, sign test p={pref['p_value']:.3g})")
        if pref["winner"] == "finetuned":
            improvements.append(line)
        elif pref["winner"] == "base":
            regressions.append(line)
            preferred_base = True
    if general_regressed or preferred_base:
        return "regression", improvements, regressions
    if improvements:
        return "deploy", improvements, regressions
    return "needs_work", improvements, regressions


def evaluation_summary(*, adapter) -> dict[str, Any]:  # noqa: ANN001
    """GET /eval/summary/{adapter_id}: the design's EvaluationSummary (10.9)."""
    rows = _latest_results(adapter)
    results = [result_view(r, items=False) for r in rows]
    human = _human(adapter)
    judge = _judge(adapter)
    speed = _speed(adapter)
    recommendation, improvements, regressions = recommend(results, human, judge)
    n = human["n"]
    shares = human["shares"]
    notes = []
    if not rows:
        notes.append("No benchmark of this adapter has finished yet.")
    if not n:
        notes.append("No human comparison has been rated (or revealed) yet.")
    if speed is None:
        notes.append("No speed test of this adapter has finished yet.")
    dated = [r.created_at for r in rows]
    return {
        "adapter_id": adapter.pk, "adapter_name": adapter.name, "base_model": adapter.base_model.name,
        "evaluation_date": max(dated) if dated else timezone.now(),
        "benchmarks_run": [r.label for r in rows], **_averages(rows),
        "benchmarks": results,
        "human_comparisons": n,
        "human_preference_base": round(100 * shares["base"]["share"], 2) if n else None,
        "human_preference_finetuned": round(100 * shares["finetuned"]["share"], 2) if n else None,
        "human_preference_tie": round(100 * shares["tie"]["share"], 2) if n else None,
        "human": human, "judge": judge,
        "speed_comparison": speed["tokens_per_second"] if speed else None,
        "memory_comparison": speed["peak_memory_mb"] if speed else None,
        "speed": speed,
        "recommendation": recommendation, "key_improvements": improvements, "key_regressions": regressions,
        "rule": RULE, "notes": " ".join(notes) or None,
    }
