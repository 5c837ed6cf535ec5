"""Evaluation's kinds of job (see nexus/jobs). On the CPU queue, where llama.cpp runs: a comparison
session's run, an LLM-judge run and a speed test. On the GPU queue: a benchmark job (transformers
through lm-eval). Comparisons, judge verdicts and benchmark results are stored as each one is
decided, so a row whose worker is gone is queued again and resumes with what is left; a speed test
measures again from the start (a half-measured run is not comparable)."""
from __future__ import annotations

from nexus.jobs import JobKind, register, requeue

COMPARISON = register(JobKind(
    name="comparison", label="Comparison", model="evaluation_app.ComparisonSession", queue="cpu",
    waiting="queued", working=("running",), run="evaluation_app.jobs.run_comparison",
    fail="evaluation_app.jobs.fail_comparison", orphaned="evaluation_app.jobs.orphaned_comparison",
    loader="evaluation_app.selectors.session_get", lock=6, time_limit_s=12 * 3600, stale_after_s=900,
    claim_message="Comparison started on {worker}", resend_filter={"cancel_requested": False}))

JUDGE = register(JobKind(
    name="judge", label="Judging", model="evaluation_app.JudgeRun", queue="cpu",
    waiting="queued", working=("running",), run="evaluation_app.jobs.run_judge",
    fail="evaluation_app.jobs.fail_judge", orphaned="evaluation_app.jobs.orphaned_judge",
    loader="evaluation_app.selectors.judge_run_get", lock=7, time_limit_s=12 * 3600, stale_after_s=900,
    claim_message="Judging started on {worker}", resend_filter={"cancel_requested": False}))

PERFORMANCE = register(JobKind(
    name="performance", label="Speed test", model="evaluation_app.PerformanceTest", queue="cpu",
    waiting="queued", working=("running",), run="evaluation_app.jobs.run_performance",
    fail="evaluation_app.jobs.fail_performance", orphaned="evaluation_app.jobs.orphaned_performance",
    loader="evaluation_app.selectors.performance_get", lock=8, time_limit_s=6 * 3600, stale_after_s=900,
    claim_message="Speed test started on {worker}", resend_filter={"cancel_requested": False}))


def run_comparison(job_id: int) -> None:
    from evaluation_app.runner import comparison_run

    comparison_run(session_id=job_id)


def fail_comparison(*, job_id: int, error: str) -> None:
    from evaluation_app.services import run_fail

    run_fail(COMPARISON, job_id, error)


def orphaned_comparison(row) -> None:  # noqa: ANN001
    requeue(COMPARISON, row.pk, f"The worker running this comparison ({row.worker}) stopped; resuming with the "
                                "prompts not yet compared")


def run_judge(job_id: int) -> None:
    from evaluation_app.runner import judge_run

    judge_run(run_id=job_id)


def fail_judge(*, job_id: int, error: str) -> None:
    from evaluation_app.services import run_fail

    run_fail(JUDGE, job_id, error)


def orphaned_judge(row) -> None:  # noqa: ANN001
    requeue(JUDGE, row.pk, f"The worker running this judge ({row.worker}) stopped; resuming with the pairs not yet "
                           "judged (none is asked for again)")


def run_performance(job_id: int) -> None:
    from evaluation_app.runner import performance_run

    performance_run(test_id=job_id)


def fail_performance(*, job_id: int, error: str) -> None:
    from evaluation_app.services import run_fail

    run_fail(PERFORMANCE, job_id, error)


def orphaned_performance(row) -> None:  # noqa: ANN001
    requeue(PERFORMANCE, row.pk, f"The worker running this speed test ({row.worker}) stopped; measuring again from "
                                 "the start")


# Benchmarks load the model with transformers (lm-eval's `hf` type): GPU work, the training queue.
BENCHMARK = register(JobKind(
    name="benchmark", label="Benchmark", model="evaluation_app.BenchmarkJob", queue="gpu",
    waiting="queued", working=("running",), run="evaluation_app.jobs.run_benchmark",
    fail="evaluation_app.jobs.fail_benchmark", orphaned="evaluation_app.jobs.orphaned_benchmark",
    loader="evaluation_app.benchmarks.selectors.benchmark_job_get", lock=9, time_limit_s=24 * 3600, stale_after_s=900,
    claim_message="Benchmark started on {worker}", resend_filter={"cancel_requested": False}))


def run_benchmark(job_id: int) -> None:
    from evaluation_app.benchmarks.runner import benchmark_run

    benchmark_run(job_id=job_id)


def fail_benchmark(*, job_id: int, error: str) -> None:
    from evaluation_app.services import run_fail

    run_fail(BENCHMARK, job_id, error)


def orphaned_benchmark(row) -> None:  # noqa: ANN001
    requeue(BENCHMARK, row.pk, f"The worker running this benchmark ({row.worker}) stopped; resuming with the "
                               "benchmarks not yet finished (finished ones are kept)")
