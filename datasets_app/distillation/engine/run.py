"""The concurrent run of a distillation job: every item's teacher calls (its mode's steps, then the
judge's), at most `batch_size` in flight and never faster than the rate limit, with retries that
honour Retry-After and back off with jitter; then the quality filters, the judge's threshold, the
multi-teacher choice and the duplicate check. Django-free.

Worker threads only make the HTTP calls. Everything else (the limiter, the filters, the duplicate
index and every hook, i.e. every database write) runs on the calling thread, so the hooks need no
locks and one database connection does. An item arrives with the calls it already has (`done`): a
resumed run never asks a teacher again for an answer that was stored."""
from __future__ import annotations

import heapq
import itertools
import random
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Protocol

from datasets_app.distillation.engine.filters import DuplicateIndex, QualityConfig, Rejection, answer_problem  # noqa: F401
from datasets_app.distillation.engine.judge import JudgeParseError, judge_messages, parse_judgement
from datasets_app.distillation.engine.limiter import RateLimiter
from datasets_app.distillation.engine.modes import (
    Call,
    ModeConfig,
    ModeError,
    Record,
    Source,
    build_record,
    filter_target,
    judge_target,
    next_call,
)
from datasets_app.distillation.engine.types import (
    Answer,
    TeacherClient,
    TeacherFatal,
    TeacherRejected,
    TeacherRetry,
)

JUDGE_STEP = "judge"
JUDGE_MAX_TOKENS = 300
MAX_PAUSE_S = 600.0  # a Retry-After longer than this is taken as this (the run checks for cancel meanwhile)
POLL_S = 0.25


@dataclass
class WorkItem:
    key: int  # the item's id
    group: int  # items that answer the same prompt (one per teacher in multi-teacher "best")
    teacher: int  # index into the run's teachers
    source: Source
    done: dict[str, dict] = field(default_factory=dict)  # step -> Answer.as_dict() (the judge's: + score/reason)


@dataclass
class Outcome:
    status: str  # accepted | rejected
    record: Record | None
    reason: str = ""
    detail: str = ""
    score: float | None = None  # the judge's, 0-1
    judge_reason: str = ""


@dataclass
class Plan:
    mode: ModeConfig
    quality: QualityConfig
    threshold: float = 0.0  # > 0: the judge scores every answer; below it is rejected
    best_of: bool = False  # multi-teacher "best": each group keeps its best-judged answer
    group_sizes: dict[int, int] = field(default_factory=dict)  # items per group (default 1)
    judge_criteria: str = ""
    max_attempts: int = 6  # of one call, for 5xx, timeouts and lost connections (429s wait and do not count)
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 30.0

    @property
    def judged(self) -> bool:
        return self.threshold > 0 or self.best_of


@dataclass
class RunResult:
    calls: int = 0  # requests started (refused ones included)
    answers: int = 0
    outcomes: int = 0
    stopped: bool = False  # should_stop() said so
    fatal: TeacherFatal | None = None  # a person has to change something (key, model, address)
    interrupted: TeacherRetry | None = None  # a call kept failing; the run can be tried again later


class DistillHooks(Protocol):
    def should_stop(self) -> bool: ...

    def on_attempt(self, when: float, item: WorkItem, step: str) -> None: ...  # a request started (refused ones count)

    def on_answer(self, item: WorkItem, step: str, answer: Answer) -> None: ...  # store it now

    def on_outcome(self, item: WorkItem, outcome: Outcome) -> None: ...

    def on_retry(self, item: WorkItem, step: str, error: TeacherRetry, delay_s: float, attempt: int) -> None: ...


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter (half to all of base * 2^(attempt-1), capped): retries of
    many items spread out instead of arriving together."""
    return min(cap_s, base_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)


class _Run:
    def __init__(self, items: list[WorkItem], *, teachers: list[TeacherClient], judge: TeacherClient | None, plan: Plan,
                 limiter: RateLimiter, hooks: DistillHooks, batch_size: int, duplicates: DuplicateIndex,
                 clock: Callable[[], float], rng: random.Random):
        if plan.judged and judge is None:
            raise ValueError("a judged plan needs a judge")
        self.teachers, self.judge, self.plan, self.limiter, self.hooks = teachers, judge, plan, limiter, hooks
        self.batch_size, self.duplicates, self.clock, self.rng = max(1, batch_size), duplicates, clock, rng
        self.ready: deque[WorkItem] = deque(items)
        self.delayed: list[tuple[float, int, WorkItem]] = []
        self.tick = itertools.count()
        self.failures: dict[tuple[int, str], int] = {}
        self.in_flight: dict[Future, tuple[WorkItem, Call]] = {}
        # A teacher's first call goes alone, until one answers: a wrong key or model costs one request, not a batch
        self.answered: set[int] = set()  # id() of the clients that have answered
        self.probing: dict[Future, int] = {}  # a first call on its way -> id() of its client (popped: None if not one)
        self.assessed: dict[int, list[tuple[WorkItem, Outcome]]] = {}
        self.result = RunResult()

    # -- what an item needs next -------------------------------------------------------------------

    def _record(self, item: WorkItem) -> Record:
        return build_record(item.source, {k: v for k, v in item.done.items() if k != JUDGE_STEP}, self.plan.mode)

    def _target(self, item: WorkItem) -> tuple[str, Answer]:
        """What the filters and the duplicate check look at: the teacher's text that lands in the
        record (a rephrased instruction, say), or an earlier step that was cut off or refused."""
        return filter_target(item.source, {k: v for k, v in item.done.items() if k != JUDGE_STEP}, self.plan.mode)

    def _problem(self, item: WorkItem) -> Rejection | None:
        prompt, answer = self._target(item)
        return answer_problem(prompt, answer, self.plan.quality)

    def _next(self, item: WorkItem) -> tuple[Call | None, TeacherClient | None]:
        call = next_call(item.source, {k: v for k, v in item.done.items() if k != JUDGE_STEP}, self.plan.mode)
        if call is not None:
            return call, self.teachers[item.teacher]
        if self.plan.judged and JUDGE_STEP not in item.done:
            if self._problem(item) is None:
                prompt, response = judge_target(self._record(item))
                system, messages = judge_messages(prompt=prompt, response=response, criteria=self.plan.judge_criteria)
                return Call(step=JUDGE_STEP, system=system, messages=messages), self.judge
        return None, None

    # -- deciding ----------------------------------------------------------------------------------

    def _assess(self, item: WorkItem, rejection: Rejection | None = None) -> None:
        record, score, judge_reason = None, None, ""
        if rejection is None:
            try:
                record = self._record(item)
                rejection = self._problem(item)
            except ModeError as exc:  # a reply without the parts its mode asks for: this item only
                record, rejection = None, Rejection("malformed", exc.message)
        judged = item.done.get(JUDGE_STEP)
        if rejection is None and judged is not None:
            if "parse_error" in judged:
                rejection = Rejection("judge_error", judged["parse_error"])
            else:
                score, judge_reason = judged["score"], judged.get("judge_reason", "")
                if self.plan.threshold > 0 and score < self.plan.threshold:
                    rejection = Rejection("judge", f"score {score:.2f} is below the threshold {self.plan.threshold:.2f}"
                                          + (f": {judge_reason}" if judge_reason else ""))
        outcome = Outcome(status="rejected" if rejection else "accepted", record=record, score=score,
                          judge_reason=judge_reason, reason=rejection.reason if rejection else "",
                          detail=rejection.detail if rejection else "")
        group = self.assessed.setdefault(item.group, [])
        group.append((item, outcome))
        if len(group) >= self.plan.group_sizes.get(item.group, 1):
            self._decide(self.assessed.pop(item.group))

    def _decide(self, group: list[tuple[WorkItem, Outcome]]) -> None:
        kept = [(i, o) for i, o in group if o.status == "accepted"]
        if self.plan.best_of and len(kept) > 1:
            best_item, best = max(kept, key=lambda io: (io[1].score or 0.0, -io[0].teacher))
            for item, outcome in kept:
                if item is not best_item:
                    outcome.status, outcome.reason = "rejected", "not_best"
                    outcome.detail = (f"{self.teachers[best_item.teacher].spec.name} scored higher "
                                      f"({best.score or 0:.2f} against {outcome.score or 0:.2f})")
        for item, outcome in sorted(group, key=lambda io: io[0].key):
            if outcome.status == "accepted" and outcome.record is not None:
                text = self._target(item)[1].text
                duplicate = self.duplicates.check(text)
                if duplicate:
                    outcome.status, outcome.reason, outcome.detail = "rejected", duplicate.reason, duplicate.detail
                else:
                    self.duplicates.add(item.key, text)
            self.hooks.on_outcome(item, outcome)
            self.result.outcomes += 1

    # -- calling -----------------------------------------------------------------------------------

    @staticmethod
    def _call(client: TeacherClient, call: Call) -> Answer:
        if call.step == JUDGE_STEP:
            return client.complete(call.messages, system=call.system, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
        return client.complete(call.messages, system=call.system)

    def _launch(self) -> None:
        while self.ready and len(self.in_flight) < self.batch_size:
            item = self.ready[0]
            try:
                call, client = self._next(item)
            except ModeError as exc:
                self.ready.popleft()
                self._assess(item, Rejection("malformed", exc.message))
                continue
            if call is None:
                self.ready.popleft()
                self._assess(item)
                continue
            if id(client) not in self.answered and id(client) in self.probing.values():
                return
            if self.limiter.wait_s() > 0:
                return
            self.ready.popleft()
            self.hooks.on_attempt(self.limiter.take(), item, call.step)
            self.result.calls += 1
            future = self.pool.submit(self._call, client, call)
            self.in_flight[future] = (item, call)
            if id(client) not in self.answered:
                self.probing[future] = id(client)

    def _settle(self, future: Future) -> None:
        item, call = self.in_flight.pop(future)
        probed = self.probing.pop(future, None)
        try:
            answer = future.result()
        except TeacherFatal as exc:
            self.result.fatal = self.result.fatal or exc
            return
        except TeacherRejected as exc:  # this request was refused; the key, address and model work
            self.answered.add(probed)
            self._assess(item, Rejection("teacher_error", exc.message))
            return
        except TeacherRetry as exc:
            self._retry(item, call, exc)
            return
        self.answered.add(probed)
        self.result.answers += 1
        stored = answer.as_dict()
        if call.step == JUDGE_STEP:
            try:
                score, reason = parse_judgement(answer.text)
                stored.update(score=score, judge_reason=reason)
            except JudgeParseError as exc:
                stored["parse_error"] = f"the judge's answer has no usable score ({exc})"
        item.done[call.step] = stored
        self.hooks.on_answer(item, call.step, answer)
        self.ready.appendleft(item)  # its next step (or its verdict) comes first

    def _retry(self, item: WorkItem, call: Call, exc: TeacherRetry) -> None:
        now = self.clock()
        if exc.kind == "rate_limit":
            # the provider's limit is shared by every request: all of them wait, and a 429 is no failure of the item
            delay = min(MAX_PAUSE_S, exc.retry_after_s if exc.retry_after_s is not None else
                        backoff_s(1, self.plan.backoff_base_s, self.plan.backoff_cap_s, self.rng))
            self.limiter.pause_until(now + delay)
            self.hooks.on_retry(item, call.step, exc, delay, 0)
            self.ready.appendleft(item)
            return
        key = (item.key, call.step)
        attempt = self.failures[key] = self.failures.get(key, 0) + 1
        if attempt >= self.plan.max_attempts:
            self.result.interrupted = self.result.interrupted or exc
            return
        delay = backoff_s(attempt, self.plan.backoff_base_s, self.plan.backoff_cap_s, self.rng)
        self.hooks.on_retry(item, call.step, exc, delay, attempt)
        heapq.heappush(self.delayed, (now + delay, next(self.tick), item))

    # -- the loop ----------------------------------------------------------------------------------

    def _over(self) -> bool:
        return self.result.fatal is not None or self.result.interrupted is not None

    def run(self, grace_s: float) -> RunResult:
        self.pool = ThreadPoolExecutor(self.batch_size, thread_name_prefix="teacher")
        try:
            while (self.ready or self.delayed or self.in_flight) and not self._over():
                if self.hooks.should_stop():
                    self.result.stopped = True
                    break
                now = self.clock()
                while self.delayed and self.delayed[0][0] <= now:
                    self.ready.append(heapq.heappop(self.delayed)[2])
                self._launch()
                timeout = POLL_S
                if self.delayed:
                    timeout = min(timeout, self.delayed[0][0] - now)
                if self.ready and len(self.in_flight) < self.batch_size:
                    timeout = min(timeout, self.limiter.wait_s())
                timeout = max(0.005, timeout)
                if self.in_flight:
                    finished, _ = wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
                    for future in finished:
                        self._settle(future)
                else:
                    time.sleep(timeout)
            self._drain(grace_s)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
        return self.result

    def _drain(self, grace_s: float) -> None:
        """Answers already on their way were paid for: keep those that come within the grace time."""
        if not self.in_flight:
            return
        finished, _ = wait(list(self.in_flight), timeout=grace_s)
        self.ready.clear()
        for future in finished:
            item, call = self.in_flight[future]
            if future.exception() is None:
                self._settle(future)
            else:
                self.in_flight.pop(future)
        self.ready.clear()  # nothing new starts after a stop


def run_items(items: list[WorkItem], *, teachers: list[TeacherClient], plan: Plan, limiter: RateLimiter,
              hooks: DistillHooks, batch_size: int, duplicates: DuplicateIndex, judge: TeacherClient | None = None,
              grace_s: float = 2.0, clock: Callable[[], float] = time.time, seed: int | None = None) -> RunResult:
    """Run `items` to their outcomes (each reported through `hooks.on_outcome`), or until stopped,
    a fatal teacher error, or a call that keeps failing (`RunResult` says which)."""
    return _Run(items, teachers=teachers, judge=judge, plan=plan, limiter=limiter, hooks=hooks, batch_size=batch_size,
                duplicates=duplicates, clock=clock, rng=random.Random(seed)).run(grace_s)
