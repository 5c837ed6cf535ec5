"""The engine's concurrent run and its rate limiter, against the local OpenAI/Anthropic server, with
in-memory hooks (no database): what a provider sees (in flight, per minute, after a 429) and what
the hooks are told."""
from __future__ import annotations

import time

import pytest

from datasets_app.distillation.engine.filters import DuplicateIndex, QualityConfig
from datasets_app.distillation.engine.limiter import RateLimiter
from datasets_app.distillation.engine.modes import ModeConfig, Source
from datasets_app.distillation.engine.run import Plan, WorkItem, run_items
from datasets_app.distillation.engine.teachers import teacher_client
from datasets_app.distillation.engine.types import TeacherSpec
from tests.datasets_app.distillation.conftest import JUDGE_MODEL, KEY


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limiter_paces_starts_evenly_and_never_exceeds_the_window():
    clock = FakeClock()
    limiter = RateLimiter(6, 60.0, clock=clock, margin_s=0.0)
    starts = []
    for _ in range(20):
        clock.now += limiter.wait_s()
        starts.append(limiter.take())
    gaps = {round(b - a, 6) for a, b in zip(starts, starts[1:])}
    assert gaps == {10.0}  # one every 60/6 s, no burst
    for i, t in enumerate(starts):
        assert sum(1 for s in starts[i:] if s - t < 60.0) <= 6


def test_a_resumed_limiter_counts_the_starts_of_the_last_minute():
    clock = FakeClock()
    seed = [clock.now - 50 + i for i in range(5)]  # 5 requests 46-50 s ago
    limiter = RateLimiter(5, 60.0, seed=seed, clock=clock, margin_s=0.0)
    assert limiter.wait_s() == pytest.approx(10.0)  # until the oldest leaves the window


def test_a_pause_holds_every_start():
    clock = FakeClock()
    limiter = RateLimiter(1000, 60.0, clock=clock)
    limiter.pause_until(clock.now + 3)
    assert limiter.wait_s() == pytest.approx(3.0)


class Hooks:
    def __init__(self, stop_after: int | None = None):
        self.answers, self.outcomes, self.retries, self.attempts = [], {}, [], []
        self.stop_after = stop_after

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.answers) >= self.stop_after

    def on_attempt(self, when, item, step):
        self.attempts.append((when, item.key if item else None, step))

    def on_answer(self, item, step, answer):
        self.answers.append((item.key, step))

    def on_outcome(self, item, outcome):
        self.outcomes[item.key] = outcome

    def on_retry(self, item, step, error, delay_s, attempt):
        self.retries.append((error.kind, round(delay_s, 2)))


def items(n: int, teacher: int = 0) -> list[WorkItem]:
    return [WorkItem(key=i, group=i, teacher=teacher, source=Source(prompt=f"Prompt number {i}: tell me about {i}."))
            for i in range(n)]


def client(fake, provider: str = "openai", model: str = "gpt-4o-mini", key: str = KEY):
    base = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    return teacher_client(TeacherSpec(provider=provider, model=model, api_key=key, base_url=base, max_tokens=200,
                                      timeout_s=10))


def plan(**kw) -> Plan:
    return Plan(mode=ModeConfig(), quality=QualityConfig(check_language=False), backoff_base_s=0.05,
                backoff_cap_s=0.2, **kw)


def run(fake, work, *, batch=4, rate=100_000, hooks=None, **kw):
    hooks = hooks or Hooks()
    result = run_items(work, teachers=kw.pop("teachers", [client(fake)]), plan=kw.pop("plan", plan()),
                       limiter=RateLimiter(rate), hooks=hooks, batch_size=batch,
                       duplicates=DuplicateIndex(QualityConfig()), seed=1, **kw)
    return result, hooks


def test_at_most_batch_size_requests_are_in_flight(teacher):
    teacher.latency_s = 0.2
    result, hooks = run(teacher, items(12), batch=3)
    assert teacher.max_in_flight == 3
    assert len(hooks.outcomes) == 12 and all(o.status == "accepted" for o in hooks.outcomes.values())
    assert result.calls == 12 and not result.stopped


def test_a_429_pauses_every_request_for_its_retry_after(teacher):
    teacher.script = [("rate_limit", 1.5)]
    result, hooks = run(teacher, items(4), batch=4)
    assert len(hooks.outcomes) == 4 and hooks.retries[0] == ("rate_limit", 1.5)
    times = teacher.times()
    refused_at = min(r["time"] for r in teacher.requests if r["status"] == 429)
    later = [t for t in times if t > refused_at + 0.05]
    assert later and min(later) - refused_at >= 1.4  # nothing started during the pause
    assert result.calls == 5  # the refused request counts as a request


def test_server_errors_back_off_and_succeed(teacher):
    teacher.script = ["error500", "overloaded"]
    result, hooks = run(teacher, items(3), batch=1)
    assert [k for k, _ in hooks.retries] == ["server", "server"]
    assert all(o.status == "accepted" for o in hooks.outcomes.values())


def test_a_wrong_key_ends_the_run_at_once_without_retries(teacher):
    result, hooks = run(teacher, items(10), batch=1, teachers=[client(teacher, key="sk-wrong-0000000000")])
    assert result.fatal is not None and result.fatal.code == "key"
    assert teacher.count() == 1 and not hooks.outcomes


def test_a_call_that_keeps_failing_interrupts_the_run(teacher):
    teacher.script = ["error500"] * 50
    result, hooks = run(teacher, items(2), batch=1, plan=plan(max_attempts=3))
    assert result.interrupted is not None and result.interrupted.kind == "server"
    assert 3 <= teacher.count() <= 6  # each item tries at most max_attempts times, with backoff between


def test_stored_answers_are_not_asked_again(teacher):
    work = items(4)
    work[0].done["answer"] = {"text": "A stored answer about prompt zero, long enough to keep.", "finish_reason": "stop"}
    work[1].done["answer"] = {"text": "Another stored answer about prompt one, also long enough.", "finish_reason": "stop"}
    result, hooks = run(teacher, work)
    assert teacher.count() == 2 and {k for k, _ in hooks.answers} == {2, 3}
    assert hooks.outcomes[0].record.output.startswith("A stored answer")


def test_stop_is_honoured_within_the_grace_and_keeps_what_arrived(teacher):
    teacher.latency_s = 0.3
    started = time.monotonic()
    result, hooks = run(teacher, items(40), batch=2, hooks=Hooks(stop_after=4))
    assert result.stopped and time.monotonic() - started < 5
    assert 4 <= len(hooks.answers) <= 6 and teacher.count() <= 6


def test_best_of_keeps_the_best_judged_answer_per_prompt(teacher):
    judge = client(teacher, model=JUDGE_MODEL)
    two = [client(teacher), client(teacher, model="gpt-4o")]
    work = [WorkItem(key=g * 2 + t, group=g, teacher=t, source=Source(prompt=f"Prompt {g}" + (" LOWSCORE" if t else "")))
            for g in range(3) for t in range(2)]
    result, hooks = run(teacher, work, teachers=two, judge=judge,
                        plan=plan(best_of=True, group_sizes={g: 2 for g in range(3)}))
    kept = {k for k, o in hooks.outcomes.items() if o.status == "accepted"}
    assert kept == {0, 2, 4}  # teacher 0's prompts were judged 9, teacher 1's (LOWSCORE) 2
    assert {o.reason for k, o in hooks.outcomes.items() if k not in kept} == {"not_best"}
