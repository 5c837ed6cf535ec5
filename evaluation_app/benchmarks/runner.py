"""A claimed benchmark job on a GPU-queue worker. The base model runs every benchmark first (each
side stored in the base-score cache as soon as it is done, or taken from it), then base + adapter;
one model is in memory at a time. Each model's backend is self-checked before any of its numbers
count. A benchmark's result is stored the moment both sides are done, so a job whose worker died
resumes with the benchmarks not yet finished."""
from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import transaction
from django.utils import timezone

from evaluation_app.benchmarks.services import base_cache_key, bench_config, workload_for
from evaluation_app.engine import harness
from evaluation_app.engine.benchmark import Side, Workload, compare, run_side
from evaluation_app.jobs import BENCHMARK
from evaluation_app.models import BaseScoreCache, BenchmarkJob, BenchmarkResult
from evaluation_app.models import RunStatus as S
from evaluation_app.runner import _progress, _start, _Stop
from nexus.errors import NexusError
from nexus.jobs import event, transition
from nexus.catalog import hf_weights

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0


def _side_dict(side: Side) -> dict[str, Any]:
    return dataclasses.asdict(side)


def _side_from(data: dict[str, Any]) -> Side:
    return Side(**data)


def _tone_judge(job: BenchmarkJob):  # noqa: ANN202
    """A yes/no tone check by the job's judge connection, or None when the job has none."""
    if not job.model and not job.deployment_id:
        return None
    from datasets_app.distillation.engine.teachers import teacher_client
    from datasets_app.distillation.services import teacher_spec
    from evaluation_app.engine.judging import tone_verdict

    client = teacher_client(teacher_spec(job, timeout_s=60))
    return lambda prompt, response, tone: tone_verdict(client, prompt=prompt, response=response, tone=tone)


class _Models:
    """The loaded LM of one side, with its self-check done once."""

    def __init__(self, job: BenchmarkJob, batch_size: int, should_stop):  # noqa: ANN001
        self.job, self.batch_size, self.should_stop = job, batch_size, should_stop
        self.lm = None
        self.role = ""
        self.label = ""
        self._beat = 0.0

    def _heartbeat(self, batches: int) -> None:
        """At most every few seconds: the row's updated_at (the reaper's liveness) and a line of
        progress inside the benchmark."""
        import time

        now = time.monotonic()
        if now - self._beat < HEARTBEAT_S:
            return
        self._beat = now
        BenchmarkJob.objects.filter(pk=self.job.pk).update(updated_at=timezone.now())
        event(BENCHMARK, self.job.pk, f"{self.label}: {batches} batches computed", level="debug", type="metric",
              data={"batches": batches, "benchmark": self.label, "side": self.role})

    def load(self, role: str, peft: str | None):  # noqa: ANN201
        if self.role == role:
            return self.lm
        self.release()
        event(BENCHMARK, self.job.pk, f"Loading {'the base model' if role == 'base' else 'base + adapter'} "
                                      f"({self.job.base_model.name}) with lm-eval {self.job.lm_eval_version}")
        self.lm = harness.load_hf(hf_weights(self.job.base_model), peft=peft, batch_size=self.batch_size)
        harness.watch(self.lm, should_stop=self.should_stop, on_batch=self._heartbeat)
        self.role = role
        reference = harness.reference_loglikelihoods(hf_weights(self.job.base_model), harness.PROBES,
                                                     model=self.lm.model, tokenizer=self.lm.tokenizer)
        check = harness.self_check(harness.backend_loglikelihoods(self.lm, harness.PROBES), reference)
        checks = dict(BenchmarkJob.objects.get(pk=self.job.pk).self_check or {})
        checks[role] = {**check.as_dict(), "backend": self.job.backend}
        BenchmarkJob.objects.filter(pk=self.job.pk).update(self_check=checks)
        if not check.ok:
            raise harness.BackendDisagrees(check.message)
        event(BENCHMARK, self.job.pk, f"Backend self-check passed for the {role} model: {check.message}")
        return self.lm

    @property
    def chat_template(self) -> bool:
        return bool(self.lm is not None and getattr(self.lm.tokenizer, "chat_template", None))

    def release(self) -> None:
        if self.lm is not None:
            import gc

            self.lm = None
            self.role = ""
            gc.collect()


def benchmark_run(*, job_id: int) -> None:
    job = BenchmarkJob.objects.select_related("base_model", "adapter", "team").get(pk=job_id)
    if not _start(BENCHMARK, job):
        return
    stop = _Stop(BENCHMARK, job.pk)
    harness.offline_environment()
    plans: list[tuple[dict, Workload, dict, str]] = []
    for config in job.benchmarks:
        work, provenance = workload_for(job, config)
        plans.append((config, work, provenance, base_cache_key(job, config, provenance)))
    done = set(job.results.values_list("benchmark_name", flat=True))
    todo = [p for p in plans if p[1].key not in done]
    sides = 2 if job.adapter_id else 1
    units, finished = len(plans) * sides, len(done) * sides
    models = _Models(job, batch_size=max(c["batch_size"] for c in job.benchmarks), should_stop=stop)
    embedder = None
    judge = _tone_judge(job)
    try:
        with tempfile.TemporaryDirectory(prefix=f"nexus-bench-{job.pk}-") as tmp:
            base_sides: dict[str, tuple[Side, bool]] = {}
            for config, work, provenance, key in todo:
                cached = BaseScoreCache.objects.filter(key=key).first()
                if cached is not None:
                    BaseScoreCache.objects.filter(pk=cached.pk).update(hits=cached.hits + 1)
                    base_sides[work.key] = (_side_from(cached.side), True)
                    event(BENCHMARK, job.pk, f"{work.label}: the base model's result for these settings is cached "
                                             f"(from {cached.created_at:%Y-%m-%d %H:%M}); not run again")
                    finished += 1
                    continue
                _progress(BENCHMARK, job.pk, finished, units, f"{work.label}: base model, {len(work.items)} items",
                          benchmark=work.key, side="base")
                BenchmarkJob.objects.filter(pk=job.pk).update(current=work.label)
                models.label = f"{work.label}, base model"
                lm = models.load("base", None)
                embedder = embedder or _embedder_if_needed(work)
                side = run_side(lm, work, bench_config(config), Path(tmp) / f"base-{len(base_sides)}",
                                embedder=embedder, tone_judge=judge, chat_template=models.chat_template,
                                should_stop=stop)
                BaseScoreCache.objects.update_or_create(key=key, defaults={
                    "base_model": job.base_model, "benchmark_name": work.key, "side": _side_dict(side),
                    "description": {"config": config, "data": provenance, "lm_eval": job.lm_eval_version,
                                    "self_check": (BenchmarkJob.objects.get(pk=job.pk).self_check or {}).get("base")}})
                base_sides[work.key] = (side, False)
                finished += 1
                if not job.adapter_id:
                    _store(job, plans, config, work, provenance, side, None, cached=False)
            if not job.adapter_id:
                for config, work, provenance, _key in todo:
                    side, was_cached = base_sides[work.key]
                    if was_cached:
                        _store(job, plans, config, work, provenance, side, None, cached=True)
            else:
                from adapters_app.services import adapter_local_dir

                models.release()
                with adapter_local_dir(job.adapter) as adapter_dir:
                    for config, work, provenance, _key in todo:
                        _progress(BENCHMARK, job.pk, finished, units,
                                  f"{work.label}: fine-tuned model, {len(work.items)} items",
                                  benchmark=work.key, side="finetuned")
                        BenchmarkJob.objects.filter(pk=job.pk).update(current=work.label)
                        models.label = f"{work.label}, fine-tuned model"
                        lm = models.load("finetuned", str(adapter_dir))
                        embedder = embedder or _embedder_if_needed(work)
                        tuned = run_side(lm, work, bench_config(config), Path(tmp) / f"tuned-{work.key.replace(':', '_')}",
                                         embedder=embedder, tone_judge=judge, chat_template=models.chat_template,
                                         should_stop=stop)
                        side, was_cached = base_sides[work.key]
                        _store(job, plans, config, work, provenance, side, tuned, cached=was_cached)
                        finished += 1
    except InterruptedError:
        models.release()
        transition(BENCHMARK, job.pk, to=S.CANCELLED, frm=[S.RUNNING], message="Cancelled; finished benchmarks "
                                                                             "are kept", completed_at=timezone.now())
        return
    except SoftTimeLimitExceeded:
        models.release()
        raise NexusError("The benchmark ran past its time limit; finished benchmarks are kept.")
    except harness.BackendDisagrees as exc:
        models.release()
        raise NexusError(str(exc), code="backend_disagrees") from exc
    models.release()
    _progress(BENCHMARK, job.pk, units, units, "Done")
    transition(BENCHMARK, job.pk, to=S.COMPLETED, frm=[S.RUNNING], message="Completed", completed_at=timezone.now(),
               progress=1.0, current="")


def _embedder_if_needed(work: Workload):  # noqa: ANN202
    if work.kind != "custom" or not any(c["evaluation_type"] == "similarity" for c in work.items):
        return None
    from evaluation_app.engine.custom import Embedder

    return Embedder()


def _store(job: BenchmarkJob, plans: list, config: dict, work: Workload, provenance: dict, base: Side,
           tuned: Side | None, *, cached: bool) -> BenchmarkResult:
    result = compare(work, base, tuned)
    position = next(i for i, p in enumerate(plans) if p[1].key == work.key)
    custom_id = provenance.get("custom_benchmark_id")
    with transaction.atomic():
        row, _ = BenchmarkResult.objects.update_or_create(job=job, benchmark_name=work.key, defaults={
            "position": position, "label": work.label, "metric": work.metric, "general": work.general,
            "custom_benchmark_id": custom_id, "base_model_score": result["base_model_score"],
            "finetuned_score": result["finetuned_score"], "improvement": result["improvement"],
            "relative_improvement": result["relative_improvement"], "num_samples": result["num_samples"],
            "interval": result["interval"], "change": result["change"] or "", "mcnemar": result["mcnemar"],
            "detailed_results": result["detailed_results"],
            "provenance": {"lm_eval_version": job.lm_eval_version, "backend": job.backend, "data": provenance,
                           "config": config, "n_shot": base.n_shot, "task_configs": base.task_configs,
                           "notes": sorted(set(base.notes + (tuned.notes if tuned else []))),
                           "base_cached": cached, "seconds": {"base": base.seconds,
                                                              "finetuned": tuned.seconds if tuned else None}}})
        summary = (f"{work.label}: base {result['base_model_score']:.1f}%"
                   + (f", fine-tuned {result['finetuned_score']:.1f}% ({result['improvement']:+.1f} points, "
                      f"95% CI {result['interval']['low']:+.1f} to {result['interval']['high']:+.1f}: "
                      f"{result['change'].replace('_', ' ')})" if tuned else ""))
        event(BENCHMARK, job.pk, summary, data={"benchmark": work.key, "result": row.pk})
    return row
