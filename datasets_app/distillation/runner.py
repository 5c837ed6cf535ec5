"""A claimed distillation job on a CPU worker: the engine's run (engine/run.py) with hooks that
store every answer the moment it arrives, keep usage and cost per teacher, push live counts, mirror
the rate limiter's attempts in Redis (so a resumed run on any worker keeps the limit) and read the
control channel for a cancel."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Case, CharField, Count, F, Q, Value, When
from django.utils import timezone

from datasets_app.distillation.engine.filters import DuplicateIndex, QualityConfig
from datasets_app.distillation.engine.limiter import RateLimiter
from datasets_app.distillation.engine.modes import ModeConfig, Source, filter_target
from datasets_app.distillation.engine.pricing import cost_usd, price_for
from datasets_app.distillation.engine.run import JUDGE_STEP, Outcome, Plan, WorkItem, backoff_s, run_items
from datasets_app.distillation.engine.teachers import teacher_client
from datasets_app.distillation.engine.templates import PromptTemplate, generation_messages, parse_generated
from datasets_app.distillation.engine.types import Answer, TeacherClient, TeacherRetry
from datasets_app.distillation.jobs import DISTILLATION
from datasets_app.distillation.models import DistillationItem, DistillationJob, DistillationTeacher
from datasets_app.distillation.selectors import price_table
from datasets_app.distillation.services import check_address, items_for, teacher_spec
from datasets_app.engine.dedup import normalize
from nexus.control import control_clear, control_receive, redis_client
from nexus.errors import NexusError
from nexus.jobs import TransientError, event, transition

log = logging.getLogger(__name__)
S = DistillationJob.Status
I = DistillationItem.Status
DB_POLL_S = 5.0
CONTROL_POLL_S = 0.5
PROGRESS_EVERY_S = 1.0
GENERATE_PER_CALL = 20
# the call in which the first teacher wrote prompts, kept on the first item it made (for the recount)
WRITE_STEP = "write_prompts"


def _attempts_key(job_id: int) -> str:
    return f"nexus:distill:attempts:{job_id}"


class _Hooks:
    """The engine's hooks, all on the calling thread. Each answer and each verdict is one UPDATE of
    its item, in the moment (that is what a resumed run reads); the job's and the teachers' counters
    are added up in memory and written once a second with the live-count event, and recounted
    from the items whenever a run starts, so a crash loses none of them (but for requests refused
    in its last second)."""

    def __init__(self, job: DistillationJob, teachers: dict[int, DistillationTeacher], judge: DistillationTeacher | None,
                 statuses: dict[int, str]):
        self.job, self.teachers, self.judge = job, teachers, judge
        self.statuses = statuses  # item id -> status before this run (a re-decided group must not count twice)
        self.prices = price_table()
        self.job_delta: Counter[str] = Counter()  # job counters not yet written
        self.teacher_delta: dict[int, Counter[str]] = {}
        self.unpriced = False
        self._control_at = self._db_at = self._progress_at = 0.0
        self._stop = False
        self._warned: dict[str, float] = {}
        self._redis = redis_client(settings.NEXUS_CONTROL_REDIS_URL)

    # -- stop ---------------------------------------------------------------------------------------

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._control_at >= CONTROL_POLL_S:
            self._control_at = now
            commands = control_receive(kind=DISTILLATION.name, job_id=self.job.pk)
            self._stop = bool(commands and "stop" in commands)
            if commands is None:  # Redis unreachable: the row decides, now
                self._db_at = 0.0
        if not self._stop and now - self._db_at >= DB_POLL_S:
            self._db_at = now
            # the row is the truth; reading it also keeps it fresh for the stale-job reaper
            DistillationJob.objects.filter(pk=self.job.pk).update(updated_at=timezone.now())
            self._stop = DistillationJob.objects.filter(pk=self.job.pk, cancel_requested=True).exists()
        if not self._stop:
            self.progress()
        return self._stop

    # -- usage --------------------------------------------------------------------------------------

    def teacher_of(self, item: WorkItem | None, step: str) -> DistillationTeacher:
        if step == JUDGE_STEP and self.judge is not None:
            return self.judge
        return self.teachers[item.teacher if item is not None else 0]  # no item: the first teacher writes prompts

    def _add(self, teacher: DistillationTeacher, **amounts: float) -> None:
        self.teacher_delta.setdefault(teacher.pk, Counter()).update(amounts)
        self.job_delta.update(amounts)

    def on_attempt(self, when: float, item: WorkItem | None, step: str) -> None:
        self._add(self.teacher_of(item, step), requests=1)
        try:  # a resumed run's limiter starts from these (see _limiter)
            pipe = self._redis.pipeline(transaction=False)
            pipe.zadd(_attempts_key(self.job.pk), {f"{when:.6f}:{random.random():.6f}": when})
            pipe.zremrangebyscore(_attempts_key(self.job.pk), 0, when - 120)
            pipe.expire(_attempts_key(self.job.pk), 300)
            pipe.execute()
        except Exception:  # noqa: BLE001 - only a resumed run's first minute would miss these
            pass

    def cost_of(self, teacher: DistillationTeacher, answer: Answer) -> float:
        price = price_for(teacher.model, self.prices)
        if price is None:
            self.unpriced = True
            return 0.0
        return cost_usd(answer.tokens_in, answer.tokens_out, price)

    def on_answer(self, item: WorkItem, step: str, answer: Answer) -> None:
        teacher = self.teacher_of(item, step)
        cost = self.cost_of(teacher, answer)
        DistillationItem.objects.filter(pk=item.key).update(
            calls=item.done, tokens_in=F("tokens_in") + answer.tokens_in, tokens_out=F("tokens_out") + answer.tokens_out,
            cost_usd=F("cost_usd") + cost, updated_at=timezone.now())
        self._add(teacher, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out, cost_usd=cost)
        if step != JUDGE_STEP:
            self.job_delta["generated"] += 1

    def on_outcome(self, item: WorkItem, outcome: Outcome) -> None:
        before = self.statuses.get(item.key, I.PENDING)
        record = dataclasses.asdict(outcome.record) if outcome.record else {}
        DistillationItem.objects.filter(pk=item.key).update(
            status=outcome.status, reason=outcome.reason, detail=outcome.detail[:5000], score=outcome.score,
            judge_reason=outcome.judge_reason[:5000], record=record, calls=item.done, updated_at=timezone.now())
        self.job_delta[outcome.status] += 1
        if before != I.PENDING:  # decided again (its group was interrupted half-way): move its count
            self.job_delta[before] -= 1
        self.statuses[item.key] = outcome.status

    def on_retry(self, item: WorkItem, step: str, error: TeacherRetry, delay_s: float, attempt: int) -> None:
        now = time.monotonic()
        if now - self._warned.get(error.kind, -1e9) < 5.0:
            return  # one line per kind of trouble every few seconds, not one per request
        self._warned[error.kind] = now
        what = (f"{error.message}; all requests wait {delay_s:.1f} s" if error.kind == "rate_limit" else
                f"{error.message}; trying again in {delay_s:.1f} s (attempt {attempt + 1})")
        event(DISTILLATION, self.job.pk, what, level="warning", data={"retry": error.kind, "delay_s": round(delay_s, 2)})

    # -- counters and live counts -------------------------------------------------------------------

    @transaction.atomic
    def flush(self) -> None:
        """Write the counters added up since the last flush."""
        for pk, delta in self.teacher_delta.items():
            DistillationTeacher.objects.filter(pk=pk).update(**{k: F(k) + v for k, v in delta.items() if v})
        fields = {k: F(k) + v for k, v in self.job_delta.items() if v}
        if self.unpriced:
            fields["cost_known"] = False
        DistillationJob.objects.filter(pk=self.job.pk).update(**fields, updated_at=timezone.now())
        self.job_delta.clear()
        self.teacher_delta.clear()

    def progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._progress_at < PROGRESS_EVERY_S:
            return
        self._progress_at = now
        self.flush()
        event(DISTILLATION, self.job.pk, "", level="debug", type="metric", data=distillation_counts(job_id=self.job.pk))


@transaction.atomic
def distillation_recount(*, job: DistillationJob) -> None:
    """Tokens, cost, answers and verdicts of a job and its teachers, added up again from its items
    (what a crashed run had not written yet is in them). Requests are counted as they are sent."""
    prices = price_table()
    rows = {t.pk: t for t in job.teachers.all()}
    judge = next((t for t in rows.values() if t.role == DistillationTeacher.Role.JUDGE), None)
    per: dict[int, Counter[str]] = {pk: Counter() for pk in rows}
    generated, unpriced = 0, False
    for teacher_id, calls in job.items.exclude(calls={}).values_list("teacher_id", "calls").iterator(chunk_size=2000):
        for step, answer in calls.items():
            who = judge.pk if step == JUDGE_STEP and judge is not None else teacher_id
            generated += step not in (JUDGE_STEP, WRITE_STEP)
            price = price_for(rows[who].model, prices)
            unpriced = unpriced or price is None
            per[who].update(tokens_in=answer.get("tokens_in", 0), tokens_out=answer.get("tokens_out", 0),
                            cost_usd=cost_usd(answer.get("tokens_in", 0), answer.get("tokens_out", 0), price) if price
                            else 0.0)
    for pk, c in per.items():
        DistillationTeacher.objects.filter(pk=pk).update(tokens_in=c["tokens_in"], tokens_out=c["tokens_out"],
                                                         cost_usd=c["cost_usd"])
    verdicts = dict(job.items.values_list("status").annotate(n=Count("id")).values_list("status", "n"))
    reviewed_in = job.items.filter(review=I.ACCEPTED).exclude(status=I.ACCEPTED).count()
    reviewed_out = job.items.filter(review=I.REJECTED).exclude(status=I.REJECTED).count()
    DistillationJob.objects.filter(pk=job.pk).update(
        generated=generated, tokens_in=sum(c["tokens_in"] for c in per.values()),
        tokens_out=sum(c["tokens_out"] for c in per.values()), cost_usd=sum(c["cost_usd"] for c in per.values()),
        cost_known=not unpriced, accepted=verdicts.get(I.ACCEPTED, 0) + reviewed_in - reviewed_out,
        rejected=verdicts.get(I.REJECTED, 0) - reviewed_in + reviewed_out, updated_at=timezone.now())


def distillation_counts(*, job_id: int) -> dict[str, Any]:
    """The live numbers of a job (what the job page's counters and bar show)."""
    job = DistillationJob.objects.get(pk=job_id)
    # after a person's review: rejected by hand ("manual") or by the filters with their reason
    rejected = DistillationItem.objects.filter(Q(review=I.REJECTED) | Q(review="", status=I.REJECTED), job_id=job_id)
    why = Case(When(~Q(status=I.REJECTED), then=Value("manual")), default=F("reason"), output_field=CharField())
    reasons = dict(rejected.annotate(why=why).values_list("why").annotate(n=Count("id")).values_list("why", "n"))
    teachers = [{"teacher": t.label, "role": t.role, "requests": t.requests, "tokens_in": t.tokens_in,
                 "tokens_out": t.tokens_out, "cost_usd": round(t.cost_usd, 6)}
                for t in job.teachers.all()]
    # progress as every kind's events carry it: a fraction (the job's API field is a percentage)
    return {"status": job.status, "progress": round(job.progress / 100, 4), "num_items": job.num_items, "generated": job.generated,
            "accepted": job.accepted, "rejected": job.rejected, "requests": job.requests, "tokens_in": job.tokens_in,
            "tokens_out": job.tokens_out, "cost_usd": round(job.cost_usd, 6), "cost_known": job.cost_known,
            "rejected_by_reason": reasons, "teachers": teachers, "prompts_to_generate": job.prompts_to_generate}


def _limiter(job: DistillationJob) -> RateLimiter:
    """Seeded with the attempts of the last minute, made by this job's earlier run if any."""
    now = time.time()
    try:
        seed = [when for _, when in redis_client(settings.NEXUS_CONTROL_REDIS_URL).zrangebyscore(
            _attempts_key(job.pk), now - 61, now + 1, withscores=True)]
    except Exception:  # noqa: BLE001 - without Redis, wait out a window if this is a resume
        seed = [now] * job.config["rate_limit"] if job.requests else []
    return RateLimiter(job.config["rate_limit"], seed=seed)


def _call_with_retries(client: TeacherClient, system: str, messages: list[dict], limiter: RateLimiter, hooks: _Hooks,
                       step: str) -> Answer | None:
    """One call outside the concurrent run (writing prompts), with the same limit and retries."""
    rng = random.Random()
    for attempt in range(1, 7):
        while (wait := limiter.wait_s()) > 0:
            if hooks.should_stop():
                return None
            time.sleep(min(wait, 0.25))
        hooks.on_attempt(limiter.take(), None, step)
        try:
            return client.complete(messages, system=system)
        except TeacherRetry as exc:
            delay = exc.retry_after_s if exc.kind == "rate_limit" and exc.retry_after_s else backoff_s(attempt, 1, 30, rng)
            if exc.kind == "rate_limit":
                limiter.pause_until(time.time() + delay)
            elif attempt == 6:
                raise
            else:
                time.sleep(delay)
    return None


def _write_prompts(job: DistillationJob, teacher: DistillationTeacher, client: TeacherClient, limiter: RateLimiter,
                   hooks: _Hooks) -> None:
    """A template's combinations ran out before num_examples: the first teacher writes more prompts
    like them (self-instruct), stored as items the moment they come."""
    raw = job.config["source"]["template"]
    template = PromptTemplate(id=raw["id"], name=raw["name"], description=raw["description"],
                              system_prompt=raw["system_prompt"], prompt=raw["prompt"], variables=raw["variables"])
    seen = {normalize(p) for p in job.items.values_list("prompt", flat=True)}
    teachers = list(job.teachers.filter(role=DistillationTeacher.Role.TEACHER).order_by("position"))
    empty_rounds = 0
    while job.prompts_to_generate > 0 and empty_rounds < 3 and not hooks.should_stop():
        examples = list(job.items.order_by("?").values_list("prompt", flat=True)[:5])
        count = min(GENERATE_PER_CALL, job.prompts_to_generate)
        system, messages = generation_messages(template=template, examples=examples, count=count)
        answer = _call_with_retries(client, system, messages, limiter, hooks, "write_prompts")
        if answer is None:
            return
        fresh = []
        for prompt in parse_generated(answer.text):
            key = normalize(prompt)
            if key and key not in seen and len(fresh) < count:
                seen.add(key)
                fresh.append({"prompt": prompt, "input": "", "system": job.config.get("system_prompt", ""),
                              "reference": "", "variables": {"written_by": teacher.label}})
        empty_rounds = 0 if fresh else empty_rounds + 1
        with transaction.atomic():
            job = DistillationJob.objects.select_for_update().get(pk=job.pk)
            first = (job.items.order_by("-group").values_list("group", flat=True).first() or 0) + 1
            items = items_for(job=job, teachers=teachers, sources=fresh, first_group=first)
            if items:
                items[0].calls = {WRITE_STEP: answer.as_dict()}
            DistillationItem.objects.bulk_create(items)
            hooks._add(teacher, tokens_in=answer.tokens_in, tokens_out=answer.tokens_out,
                       cost_usd=hooks.cost_of(teacher, answer))
            remaining = job.prompts_to_generate - len(fresh) if empty_rounds < 3 else 0
            DistillationJob.objects.filter(pk=job.pk).update(
                num_prompts=F("num_prompts") + len(fresh), num_items=F("num_items") + len(items),
                prompts_to_generate=remaining)
            event(DISTILLATION, job.pk, f"The teacher wrote {len(fresh)} new prompts" +
                  (f"; {remaining} to go" if remaining else ""))
        job.refresh_from_db()
    if job.prompts_to_generate and empty_rounds >= 3:
        event(DISTILLATION, job.pk, "The teacher wrote no new prompts three times in a row; going on with "
                                    f"{job.num_prompts}", level="warning")


def _plan(job: DistillationJob, group_sizes: dict[int, int], judged: bool) -> Plan:
    config = job.config
    quality = QualityConfig(**config.get("quality", {}))
    mode = ModeConfig(mode=job.mode, system_prompt=config.get("system_prompt", ""),
                      include_reasoning=config.get("include_reasoning", False),
                      pivot_language=config.get("pivot_language", "French"))
    return Plan(mode=mode, quality=quality, threshold=config.get("quality_threshold", 0.0),
                best_of=config.get("multi_teacher") == "best" and judged, group_sizes=group_sizes)


def distillation_run(*, job_id: int) -> None:
    job = DistillationJob.objects.get(pk=job_id)
    if job.cancel_requested:
        transition(DISTILLATION, job.pk, to=S.CANCELLED, frm=[S.RUNNING], message="Cancelled",
                   completed_at=timezone.now())
        return
    control_clear(kind=DISTILLATION.name, job_id=job.pk)  # the row says whether it is cancelled; old signals don't
    if job.started_at is None:
        DistillationJob.objects.filter(pk=job.pk).update(started_at=timezone.now())
    rows = list(job.teachers.select_related("deployment").order_by("role", "position"))
    teachers = [t for t in rows if t.role == DistillationTeacher.Role.TEACHER]
    judge = next((t for t in rows if t.role == DistillationTeacher.Role.JUDGE), None)
    for i, t in enumerate(rows):
        path = "judge_config" if t.role == "judge" else ("teacher_configs[%d]" % i if len(teachers) > 1 else "teacher_config")
        check_address(t.provider, t.base_url, path)  # the operator may have changed the list since
    clients = {t.pk: teacher_client(teacher_spec(t)) for t in rows}
    limiter = _limiter(job)
    by_index = dict(enumerate(teachers))
    distillation_recount(job=job)  # what a crashed run had not written yet is in the items
    hooks = _Hooks(job, by_index, judge, {})

    if job.prompts_to_generate:
        _write_prompts(job, teachers[0], clients[teachers[0].pk], limiter, hooks)
        job.refresh_from_db()

    open_groups = set(job.items.filter(status=I.PENDING).values_list("group", flat=True))
    index_of = {t.pk: i for i, t in enumerate(teachers)}
    rows_ = list(job.items.filter(group__in=open_groups).order_by("group", "teacher__position"))
    hooks.statuses = {r.pk: r.status for r in rows_}
    group_sizes = Counter(r.group for r in rows_)
    items = [WorkItem(key=r.pk, group=r.group, teacher=index_of[r.teacher_id],
                      source=Source(prompt=r.prompt, input=r.input, output=r.reference, system=r.system),
                      done=dict(r.calls or {})) for r in rows_]  # the modes look only at their own steps
    plan = _plan(job, dict(group_sizes), judged=judge is not None)
    duplicates = DuplicateIndex(plan.quality)
    for pk, prompt in job.items.order_by("group").values_list("pk", "prompt"):
        duplicates.add_prompt(prompt, key=pk)
    kept = job.items.filter(status=I.ACCEPTED).exclude(group__in=open_groups).order_by("group")
    for row in kept.only("pk", "prompt", "input", "reference", "system", "calls"):
        source = Source(prompt=row.prompt, input=row.input, output=row.reference, system=row.system)
        calls = {k: v for k, v in row.calls.items() if k != JUDGE_STEP}
        duplicates.add(row.pk, filter_target(source, calls, plan.mode)[1].text)  # as the run checked it
    done_before = job.items.exclude(status=I.PENDING).count()
    stored = sum(1 for r in rows_ if set(r.calls or {}) - {WRITE_STEP} and r.status == I.PENDING)
    if done_before or stored:
        event(DISTILLATION, job.pk, f"Resuming: {done_before} items already decided and {stored} with answers stored "
                                    f"are not asked again; {len(items) - stored} to go")
    try:
        result = run_items(items, teachers=[clients[t.pk] for t in teachers],
                           judge=clients[judge.pk] if judge else None, plan=plan, limiter=limiter, hooks=hooks,
                           batch_size=job.config["batch_size"], duplicates=duplicates)
    except SoftTimeLimitExceeded:
        # a long job (many prompts at a low rate) outlived its task's time slice: what it has is
        # stored, so the kit's retry resumes it rather than failing it
        hooks.progress(force=True)
        raise TransientError("the run used its time slice; resuming from the answers stored") from None
    hooks.progress(force=True)
    if result.fatal is not None:
        raise NexusError(f"Distillation failed: {result.fatal.message}", code="teacher_error")
    if result.interrupted is not None:
        raise TransientError(result.interrupted.message)
    job.refresh_from_db()
    if result.stopped or job.cancel_requested:
        transition(DISTILLATION, job.pk, to=S.CANCELLED, frm=[S.RUNNING], completed_at=timezone.now(),
                   message=f"Cancelled: {job.accepted} accepted and {job.rejected} rejected so far are kept for review")
        return
    left = job.items.filter(status=I.PENDING).count()
    if left:
        raise TransientError(f"{left} items are still without a verdict")
    counts = distillation_counts(job_id=job.pk)
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(counts["rejected_by_reason"].items(), key=lambda x: -x[1]))
    cost = f"${job.cost_usd:.4f}" + ("" if job.cost_known else " (some models have no price)")
    transition(DISTILLATION, job.pk, to=S.COMPLETED, frm=[S.RUNNING], completed_at=timezone.now(),
               data={k: v for k, v in counts.items() if k != "status"},  # the event's own status is the new one
               message=f"Completed: {job.accepted} accepted, {job.rejected} rejected" + (f" ({reasons})" if reasons else "")
               + f"; {job.requests} requests, {job.tokens_in:,} tokens in, {job.tokens_out:,} out, {cost}")
