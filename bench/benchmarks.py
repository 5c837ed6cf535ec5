"""Benchmarks through the platform against lm-evaluation-harness run directly, in the same run.

1. An MMLU subset (default 200 questions, 0 shots) on the demo model as a platform benchmark job
   (service, the job kit's claim, the GPU worker's runner with its self-check, database writes and
   events, in this process) against `lm_eval.simple_evaluate` on the same generated task (same
   items, same shots, same batch size, model loaded by lm-eval), run before and after the platform
   job. Target: platform <= 1.1x the direct time, and the same right/wrong on every item.
2. The same job again: the base model's side comes from the cache. Target: <= 0.1x the first run.

Usage: .venv/bin/python bench/benchmarks.py [--samples 200] [--shots 0]
Results are appended to bench/RESULTS-benchmarks.txt."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "bench" / "RESULTS-benchmarks.txt"


def _direct(hf_dir: str, folder: Path, name: str, *, shots: int, batch: int) -> tuple[float, dict[str, bool]]:
    """lm-eval as a user runs it on a task folder: model loaded by lm-eval, samples logged."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    out = simple_evaluate(model="hf", model_args={"pretrained": hf_dir, "dtype": "float32", "device": "cpu"},
                          tasks=[name], task_manager=TaskManager(include_path=str(folder), include_defaults=False),
                          num_fewshot=shots, batch_size=batch, log_samples=True, bootstrap_iters=0,
                          verbosity="WARNING")
    seconds = time.perf_counter() - started
    return seconds, {s["doc"]["id"]: bool(s["acc"]) for s in out["samples"][name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--shots", type=int, default=0, help="5 is the design default; 0 keeps a 2-core run short")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    import django

    from bench.benchlib import BenchSystem

    with tempfile.TemporaryDirectory(prefix="nexus-bench-benchmarks-") as tmp:
        tmp = Path(tmp)
        system = BenchSystem(tmp, database="nexus_bench_benchmarks", redis_db=12)
        print(f"preparing a fresh database in {tmp} ...", flush=True)
        system.fresh()
        os.environ.update(system.env)
        django.setup()
        from django.conf import settings

        from evaluation_app.benchmarks.runner import benchmark_run
        from evaluation_app.benchmarks.services import benchmark_job_create, workload_for
        from evaluation_app.engine import harness
        from evaluation_app.jobs import BENCHMARK
        from evaluation_app.models import BenchmarkJob
        from nexus.jobs import claim
        from nexus.models import BaseModel
        from nexus.teams import team_ensure_personal, user_create

        harness.offline_environment()
        user = user_create(username="bench", password="bench-password-1")
        team = team_ensure_personal(user=user)
        base = BaseModel.objects.get(name="SmolLM2-135M-Instruct")
        body = {"name": "bench", "base_model": base.name, "benchmarks": [
            {"benchmark_name": "mmlu", "num_samples": args.samples, "num_few_shot": args.shots,
             "batch_size": args.batch}]}

        def platform_run() -> tuple[float, BenchmarkJob]:
            job = benchmark_job_create(team=team, user=user, body=body)
            assert claim(BENCHMARK, job.pk, worker="bench@host")
            started = time.perf_counter()
            benchmark_run(job_id=job.pk)
            seconds = time.perf_counter() - started
            job = BenchmarkJob.objects.get(pk=job.pk)
            assert job.status == "completed", job.error
            return seconds, job

        # the direct run's task: the same engine calls the worker makes, written to a folder of its own
        probe = BenchmarkJob(team=team, base_model=base, benchmarks=body["benchmarks"])
        work, _ = workload_for(probe, {**body["benchmarks"][0], "benchmark_name": "mmlu"})
        spec = harness.mc_task(tmp / "direct", "nexus_mmlu", work.items, work.fewshot[:args.shots], style=work.style)
        say(f"MMLU subset: {len(work.items)} questions ({len({i['category'] for i in work.items})} subjects), "
            f"{args.shots} shots, batch {args.batch}, {base.name} (transformers on {os.cpu_count()} CPU threads), "
            f"lm-eval {harness.lm_eval_version()}; data {settings.NEXUS_DATA_DIR}")
        before, direct = _direct(base.hf_path, spec.folder, spec.name, shots=args.shots, batch=args.batch)
        say(f"lm_eval directly (before):  {before:.2f} s, accuracy {sum(direct.values()) / len(direct):.4f}")
        platform, job = platform_run()
        result = job.results.get()
        items = result.detailed_results["items"]
        ours = {k: v["base"]["correct"] for k, v in items.items()}
        say(f"the platform's job:         {platform:.2f} s, accuracy {result.base_model_score / 100:.4f} "
            f"(self-check: {job.self_check['base']['message']})")
        after, direct_again = _direct(base.hf_path, spec.folder, spec.name, shots=args.shots, batch=args.batch)
        say(f"lm_eval directly (after):   {after:.2f} s")
        same = sum(ours[k] == direct[k] for k in direct)
        say(f"same right/wrong as lm_eval directly: {same} of {len(direct)} items; direct runs agree with each other "
            f"on {sum(direct[k] == direct_again[k] for k in direct)}; same task YAML apart from file paths: "
            f"{_same_yaml(result.provenance['task_configs']['nexus_mmlu'], spec.yaml_text)}")
        baseline = (before + after) / 2
        ratio = platform / baseline
        say(f"time: platform {platform:.2f} s / direct {baseline:.2f} s (mean of before and after) = {ratio:.3f} -> "
            f"{'meets' if ratio <= 1.1 else 'MISSES'} the target (<= 1.1x)")
        cached_s, cached = platform_run()
        again = cached.results.get()
        assert again.provenance["base_cached"], "the second run did not use the cache"
        say(f"the same job again (base side cached): {cached_s:.2f} s = {cached_s / platform:.3f} of the first -> "
            f"{'meets' if cached_s / platform <= 0.1 else 'MISSES'} the target (<= 0.1x); same score "
            f"{again.base_model_score == result.base_model_score}")
        from django.db import connection

        connection.close()
        system.drop()
    stamp = time.strftime("%Y-%m-%d %H:%M")
    with RESULTS.open("a") as fh:
        fh.write(f"######## {stamp}: bench/benchmarks.py --samples {args.samples} --shots {args.shots}\n")
        fh.write("\n".join(lines) + "\n")


def _same_yaml(a: str, b: str) -> bool:
    import re

    strip = re.compile(r"/[^\s'\"]*/(nexus_mmlu\.(test|fewshot)\.jsonl)")
    return strip.sub(r"\1", a) == strip.sub(r"\1", b)


if __name__ == "__main__":
    main()
