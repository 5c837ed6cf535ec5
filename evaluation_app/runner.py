"""Claimed evaluation rows on a worker: a comparison session's run (both models loaded once, prompts
in batches, each comparison stored and pushed the moment it is finished), an LLM-judge run (pairs
judged concurrently, each verdict stored as it is decided) and a speed test (real llama.cpp
servers, one at a time). A cancel arrives on the control channel and is read between requests."""
from __future__ import annotations

import logging
import random
import tempfile
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from evaluation_app.engine.compare import (
    GenerationError,
    LoadFailed,
    LocalModel,
    RemoteModel,
    SessionModel,
    answer_batch,
)
from evaluation_app.jobs import COMPARISON, JUDGE, PERFORMANCE
from evaluation_app.models import ComparisonSession, JudgeEvaluation, JudgeRun, PerformanceTest, PromptComparison
from evaluation_app.models import RunStatus as S
from nexus.control import control_clear, control_receive
from nexus.errors import NexusError
from nexus.jobs import JobKind, TransientError, event, transition

log = logging.getLogger(__name__)
BATCH = 8  # prompts per batch: each model answers the batch, then the batch's comparisons are stored
CONTROL_POLL_S = 0.5


class _Stop:
    """Reads the control channel (and, when Redis is unreachable, the row) at most twice a second."""

    def __init__(self, kind: JobKind, row_id: int):
        self.kind, self.row_id = kind, row_id
        self._at, self._stop = 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._at >= CONTROL_POLL_S:
            self._at = now
            commands = control_receive(kind=self.kind.name, job_id=self.row_id)
            if commands is None:
                commands = ["stop"] if self.kind.Model.objects.filter(pk=self.row_id, cancel_requested=True).exists() else []
            self._stop = "stop" in commands
        return self._stop


def _start(kind: JobKind, row) -> bool:  # noqa: ANN001
    """False when the row was cancelled while queued for this worker."""
    if row.cancel_requested:
        transition(kind, row.pk, to=S.CANCELLED, frm=[S.RUNNING], message="Cancelled", completed_at=timezone.now())
        return False
    control_clear(kind=kind.name, job_id=row.pk)
    if row.started_at is None:
        kind.Model.objects.filter(pk=row.pk).update(started_at=timezone.now())
    return True


def _progress(kind: JobKind, row_id: int, done: int, total: int, message: str = "", **data: Any) -> None:
    fraction = done / total if total else 1.0
    kind.Model.objects.filter(pk=row_id).update(progress=fraction, stage=message[:300], updated_at=timezone.now())
    event(kind, row_id, message, level="debug", type="metric", data={"progress": fraction, "done": done,
                                                                     "total": total, **data})


# -- comparison sessions ----------------------------------------------------------------------------


def _session_model(side: dict[str, Any]) -> SessionModel:
    """Load one side of a session (on this worker)."""
    from adapters_app.models import AdapterExport, LoRAAdapter
    from deployments_app.models import Deployment
    from deployments_app.proxy import deployment_endpoint
    from deployments_app.services import gguf_local_path
    from nexus.models import BaseModel

    describe = {"model_id": f"{side['type']}:{side.get('export_id') or side.get('deployment_id') or side.get('adapter_id') or side['base_model_id']}",
                "model_name": side["label"], "is_finetuned": side["is_finetuned"], "adapter_id": side.get("adapter_id")}
    base = BaseModel.objects.filter(pk=side["base_model_id"]).first()
    if side["type"] == "deployment":
        deployment = Deployment.objects.filter(pk=side["deployment_id"]).first()
        if deployment is None or deployment.status != Deployment.Status.RUNNING:
            raise NexusError(f"{side['label']} is not running (start it, then run the session again).")
        base_url, api_key = deployment_endpoint(deployment=deployment)
        return RemoteModel(describe, base_url=base_url, api_key=api_key, model=deployment.name)
    if base is None:
        raise NexusError(f"The base model of {side['label']} was removed.")
    if side["type"] == "merged":
        export = AdapterExport.objects.filter(pk=side["export_id"]).first()
        if export is None or not export.path:
            raise NexusError(f"The merged export of {side['label']} was deleted.")
        return LocalModel(describe, model_path=gguf_local_path(export.path))
    lora = ""
    if side["type"] == "adapter":
        adapter = LoRAAdapter.objects.filter(pk=side["adapter_id"]).first()
        if adapter is None or not adapter.gguf_path:
            raise NexusError(f"The adapter GGUF of {side['label']} is gone: export it again.")
        lora = gguf_local_path(adapter.gguf_path)
    return LocalModel(describe, model_path=gguf_local_path(base.gguf_path), lora_path=lora)


def _store(comparison: PromptComparison, results: dict[str, dict | GenerationError]) -> bool:
    errors = [str(r) for r in results.values() if isinstance(r, GenerationError)]
    fields: dict[str, Any] = {"finished_at": timezone.now()}
    if errors:
        fields.update(status=PromptComparison.Status.FAILED, error="; ".join(errors)[:2000])
    else:
        fields.update(status=PromptComparison.Status.DONE, error="", base_response=results["base"],
                      finetuned_response=results["finetuned"])
    PromptComparison.objects.filter(pk=comparison.pk).update(**fields)
    return not errors


def comparison_run(*, session_id: int) -> None:
    session = ComparisonSession.objects.get(pk=session_id)
    if not _start(COMPARISON, session):
        return
    should_stop = _Stop(COMPARISON, session.pk)
    todo = list(session.comparisons.filter(status=PromptComparison.Status.PENDING).order_by("index"))
    total = session.comparisons.count()
    done = total - len(todo)
    models: list[SessionModel] = []
    try:
        started = time.monotonic()
        for side in session.sides:
            models.append(_session_model(side))
        event(COMPARISON, session.pk, f"Loaded both models in {time.monotonic() - started:.1f} s; {len(todo)} prompts "
                                      f"to compare")
        sampling, failed = session.sampling_params, 0
        for start in range(0, len(todo), BATCH):
            if should_stop():
                break
            batch = todo[start:start + BATCH]
            prompts = [{"messages": c.messages, "seed": c.seed} for c in batch]
            answers = {role: answer_batch(model, prompts, system=session.system_prompt, sampling=sampling,
                                          concurrent=isinstance(model, RemoteModel), should_stop=should_stop)
                       for role, model in zip(("base", "finetuned"), models)}
            for i, comparison in enumerate(batch):
                results = {role: answers[role][i] for role in answers}
                if any(r is None for r in results.values()):
                    continue  # stopped before both answered: it stays pending for the next run
                ok = _store(comparison, results)
                done, failed = done + 1, failed + (not ok)
                _progress(COMPARISON, session.pk, done, total, f"{done} of {total} compared",
                          comparison_id=comparison.pk, index=comparison.index, ok=ok)
    except LoadFailed as exc:
        raise NexusError(str(exc)) from exc
    except SoftTimeLimitExceeded as exc:
        raise TransientError("the run reached its time limit; resuming with the prompts left") from exc
    finally:
        for model in models:
            model.close()
    left = session.comparisons.filter(status=PromptComparison.Status.PENDING).count()
    if left:
        transition(COMPARISON, session.pk, to=S.CANCELLED, frm=[S.RUNNING], completed_at=timezone.now(),
                   message=f"Cancelled with {left} prompts not compared (run again to finish them)")
        return
    transition(COMPARISON, session.pk, to=S.COMPLETED, frm=[S.RUNNING], completed_at=timezone.now(), progress=1.0,
               message=f"Completed: {total - failed} compared" + (f", {failed} failed" if failed else ""))


# -- LLM judge --------------------------------------------------------------------------------------


def _store_judgement(run: JudgeRun, comparison: PromptComparison, outcome) -> bool:  # noqa: ANN001
    from django.db.models import F

    orders = [{"consistent": r.consistent, "orders": r.orders} for r in outcome.rounds]
    if outcome.judgement is not None:
        j = outcome.judgement
        fields = {"status": JudgeEvaluation.Status.DONE, "judge_verdict": j.verdict, "judge_reasoning": j.reasoning,
                  "criteria_scores": j.criteria_scores, "confidence": j.confidence,
                  "consistent": all(r.consistent for r in outcome.rounds)}
    else:
        fields = {"status": JudgeEvaluation.Status.ERROR, "error": outcome.error[:2000]}
    JudgeEvaluation.objects.update_or_create(run=run, comparison=comparison, defaults={**fields, "orders": orders})
    JudgeRun.objects.filter(pk=run.pk).update(calls=F("calls") + outcome.calls, tokens_in=F("tokens_in") + outcome.tokens_in,
                                              tokens_out=F("tokens_out") + outcome.tokens_out)
    return outcome.judgement is not None


def judge_run(*, run_id: int) -> None:
    from datasets_app.distillation.engine.teachers import teacher_client
    from datasets_app.distillation.engine.types import TeacherFatal
    from datasets_app.distillation.services import check_address, teacher_spec
    from evaluation_app.engine.judging import Stopped, judge_pair

    run = JudgeRun.objects.select_related("session", "deployment").get(pk=run_id)
    if not _start(JUDGE, run):
        return
    check_address(run.provider, run.base_url, "judge_config")  # the operator may have narrowed the hosts since
    should_stop = _Stop(JUDGE, run.pk)
    client = teacher_client(teacher_spec(run, timeout_s=settings.NEXUS_JUDGE_TIMEOUT_S))
    judged = set(run.evaluations.filter(status=JudgeEvaluation.Status.DONE).values_list("comparison_id", flat=True))
    pairs = list(run.session.comparisons.filter(status=PromptComparison.Status.DONE).order_by("index"))
    todo = [c for c in pairs if c.pk not in judged]
    done, ok_count = len(pairs) - len(todo), len(judged)
    rng = random.Random()
    stopping = threading.Event()  # set by this thread from should_stop(); the judge's threads only read it

    def one(c: PromptComparison):  # noqa: ANN202
        prompt = c.prompt if len(c.messages) <= 1 else "\n\n".join(f"[{m['role']}] {m['content']}" for m in c.messages)
        return judge_pair(client, prompt=prompt, base=c.base_response["response"],
                          finetuned=c.finetuned_response["response"], criteria=run.evaluation_criteria,
                          rubric=run.scoring_rubric, system_prompt=run.session.system_prompt,
                          rounds=run.num_evaluations, should_stop=stopping.is_set, rng=rng)

    first_error = ""
    try:
        with ThreadPoolExecutor(max_workers=run.concurrency) as pool:
            queue, running = list(todo), {}
            while queue or running:
                if should_stop():
                    stopping.set()
                while queue and len(running) < run.concurrency and not stopping.is_set():
                    c = queue.pop(0)
                    running[pool.submit(one, c)] = c
                if not running:
                    break
                finished, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
                for future in finished:
                    c = running.pop(future)
                    try:
                        outcome = future.result()
                    except Stopped:
                        continue
                    ok = _store_judgement(run, c, outcome)
                    ok_count += ok
                    first_error = first_error or outcome.error
                    done += 1
                    _progress(JUDGE, run.pk, done, len(pairs), f"{done} of {len(pairs)} pairs judged",
                              comparison_id=c.pk, ok=ok)
    except TeacherFatal as exc:
        raise NexusError(exc.message) from exc
    except SoftTimeLimitExceeded as exc:
        raise TransientError("the judge run reached its time limit; resuming with the pairs left") from exc
    finally:
        client.close()
    if done < len(pairs):
        transition(JUDGE, run.pk, to=S.CANCELLED, frm=[S.RUNNING], completed_at=timezone.now(),
                   message=f"Cancelled after {done} of {len(pairs)} pairs (verdicts so far are kept)")
        return
    if pairs and ok_count == 0:
        raise NexusError(f"The judge gave no usable verdict for any of the {len(pairs)} pairs; the first error: "
                         f"{first_error}")
    errors = len(pairs) - ok_count
    transition(JUDGE, run.pk, to=S.COMPLETED, frm=[S.RUNNING], completed_at=timezone.now(), progress=1.0,
               message=f"Completed: {ok_count} pairs judged" + (f", {errors} recorded as errors" if errors else ""))


# -- speed tests ------------------------------------------------------------------------------------


def performance_run(*, test_id: int) -> None:
    from deployments_app.services import gguf_local_path
    from evaluation_app.engine.speed import SpeedConfig, Stopped, Target, compare, run_speed_test

    test = PerformanceTest.objects.select_related("adapter", "base_model").get(pk=test_id)
    if not _start(PERFORMANCE, test):
        return
    if not test.adapter.gguf_path or not test.base_model.gguf_path:
        raise NexusError("The adapter or its base model has no GGUF file any more: export it again.")
    base_path = gguf_local_path(test.base_model.gguf_path)
    targets = [Target(name="base", model_path=base_path),
               Target(name="finetuned", model_path=base_path, lora_path=gguf_local_path(test.adapter.gguf_path))]
    config = SpeedConfig(test_prompts=test.test_prompts, output_lengths=test.output_lengths,
                         batch_sizes=test.batch_sizes, num_iterations=test.num_iterations,
                         warmup_iterations=test.warmup_iterations)
    should_stop = _Stop(PERFORMANCE, test.pk)
    last = [0.0]

    def on_progress(done: int, total: int, message: str) -> None:
        if time.monotonic() - last[0] >= 1.0 or done == total:
            last[0] = time.monotonic()
            _progress(PERFORMANCE, test.pk, done, total, message)

    workdir = Path(settings.NEXUS_DATA_DIR) / "evaluation" / f"speed-{test.pk}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            results = run_speed_test(targets, config, workdir=Path(tmp), should_stop=should_stop, on_progress=on_progress)
    except Stopped:
        transition(PERFORMANCE, test.pk, to=S.CANCELLED, frm=[S.RUNNING], completed_at=timezone.now(),
                   message="Cancelled (a speed test is measured again from the start)")
        return
    except SoftTimeLimitExceeded as exc:
        raise NexusError("The speed test reached its time limit: ask for fewer cells or iterations.") from exc
    base, finetuned = results["base"], results["finetuned"]
    transition(PERFORMANCE, test.pk, to=S.COMPLETED, frm=[S.RUNNING], completed_at=timezone.now(), progress=1.0,
               base_model_metrics=base, finetuned_metrics=finetuned, comparison=compare(base, finetuned),
               message="Completed")
