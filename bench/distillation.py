"""Distillation throughput against a local teacher with a fixed latency, in one run:

  1. baseline: a plain sequential loop of OpenAI SDK calls, one prompt after another;
  2. concurrency-bound: a job through the platform (services, the job kit's claim, the worker's
     runner with its database writes, events and Redis, in this process) with --batch requests in
     flight and a rate limit far above them: achieved requests/s against batch/latency;
  3. rate-bound: the same with --rate requests a minute, below batch/latency: achieved against
     rate/60, and the most requests the teacher saw in any 60 s (never above --rate);
  4. overhead: the same prompts at zero latency through the engine with in-memory hooks and
     through the platform: the difference per item is what the platform adds (database, events).

    .venv/bin/python bench/distillation.py [--latency 0.25 --batch 8 --rate 120 --prompts 200]

Achieved rate = (requests - 1) / (last arrival - first arrival), as the teacher counts them.
Targets: 2 and 3 at least 0.9 of their bound and 3 never above its limit. The bench owns its
database (nexus_bench_distill), Redis database (12) and data folder; step 3 takes a little over
a minute by design (the limit is per minute).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.benchlib import BenchSystem  # noqa: E402

KEY = "sk-bench-0000000000000000"
MODEL = "gpt-4o-mini"


def achieved(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def prompts(n: int, tag: str) -> list[str]:
    return [f"[{tag}] Question {i}: explain idea number {i} to a new colleague." for i in range(n)]


def answer(messages, model) -> str:
    import hashlib

    text = messages[-1]["content"]
    words = "river stone lantern harbor meadow copper violet orbit canyon ember falcon glacier".split()
    digest = hashlib.sha256(text.encode()).digest()
    return "Here is a careful answer: " + " ".join(words[b % len(words)] for b in digest[:20]) + "."


def _serve(conn, latency_s: float) -> None:
    """The teacher in its own process, as a remote provider is: its threads don't share our GIL."""
    from tests.fakes.teachers import FakeTeacher

    fake = FakeTeacher(api_key=KEY, models=[MODEL], latency_s=latency_s, responder=answer).start()
    conn.send(fake.openai_base_url)
    while True:
        command, *args = conn.recv()
        if command == "stop":
            fake.stop()
            conn.send(None)
            return
        if command == "set":
            setattr(fake, args[0], args[1])
            conn.send(None)
        elif command in ("reset",):
            conn.send(fake.reset())
        else:
            value = getattr(fake, command)
            conn.send(value(*args) if callable(value) else value)


class RemoteTeacher:
    """tests.fakes.teachers.FakeTeacher in a child process, asked for its counts through a pipe."""

    def __init__(self, latency_s: float):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, latency_s), daemon=True)
        self.proc.start()
        self.openai_base_url = self.conn.recv()

    def _ask(self, *command):
        self.conn.send(command)
        return self.conn.recv()

    def reset(self) -> None:
        self._ask("reset")

    def times(self) -> list[float]:
        return self._ask("times")

    def max_in_window(self, window_s: float) -> int:
        return self._ask("max_in_window", window_s)

    @property
    def max_in_flight(self) -> int:
        return self._ask("max_in_flight")

    def set_latency(self, seconds: float) -> None:
        self._ask("set", "latency_s", seconds)

    def stop(self) -> None:
        self._ask("stop")
        self.proc.join(5)


def sequential(fake, n: int) -> tuple[float, float]:
    import openai

    client = openai.OpenAI(api_key=KEY, base_url=fake.openai_base_url, max_retries=0)
    fake.reset()
    started = time.perf_counter()
    for p in prompts(n, "seq"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=200)
    return n / (time.perf_counter() - started), achieved(fake.times())


def platform_job(fake, user, team, n: int, *, batch: int, rate: int, tag: str) -> tuple[float, dict]:
    """A job created and run as the API and a worker would; returns its wall time and row."""
    from django.db import transaction

    from datasets_app.distillation.jobs import DISTILLATION
    from datasets_app.distillation.models import DistillationJob
    from datasets_app.distillation.runner import distillation_run
    from datasets_app.distillation.services import distillation_job_create
    from nexus.jobs import claim

    body = {"name": f"bench {tag}", "teacher_config": {"provider": "openai", "model": MODEL, "api_key": KEY,
                                                       "base_url": fake.openai_base_url, "max_tokens": 200},
            "prompts_config": {"prompts": prompts(n, tag)}, "batch_size": batch, "rate_limit": rate,
            "quality": {"check_language": False}}
    with transaction.atomic():
        job = distillation_job_create(team=team, user=user, body=body)
    fake.reset()
    assert claim(DISTILLATION, job.pk, worker="bench@host")
    started = time.perf_counter()
    distillation_run(job_id=job.pk)
    wall = time.perf_counter() - started
    row = DistillationJob.objects.get(pk=job.pk)
    assert row.status == "completed", (row.status, row.error_message)
    return wall, {"accepted": row.accepted, "rejected": row.rejected, "requests": row.requests}


def engine_only(fake, n: int, batch: int) -> float:
    from datasets_app.distillation.engine.filters import DuplicateIndex, QualityConfig
    from datasets_app.distillation.engine.limiter import RateLimiter
    from datasets_app.distillation.engine.modes import ModeConfig, Source
    from datasets_app.distillation.engine.run import Plan, WorkItem, run_items
    from datasets_app.distillation.engine.teachers import teacher_client
    from datasets_app.distillation.engine.types import TeacherSpec

    class Null:
        def should_stop(self): return False
        def on_attempt(self, *a): pass
        def on_answer(self, *a): pass
        def on_outcome(self, *a): pass
        def on_retry(self, *a): pass

    quality = QualityConfig(check_language=False)
    items = [WorkItem(key=i, group=i, teacher=0, source=Source(prompt=p)) for i, p in enumerate(prompts(n, "engine"))]
    client = teacher_client(TeacherSpec(provider="openai", model=MODEL, api_key=KEY, base_url=fake.openai_base_url,
                                        max_tokens=200))
    started = time.perf_counter()
    result = run_items(items, teachers=[client], plan=Plan(mode=ModeConfig(), quality=quality),
                       limiter=RateLimiter(100_000), hooks=Null(), batch_size=batch, duplicates=DuplicateIndex(quality))
    assert result.outcomes == n
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.25, help="the teacher's seconds per answer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rate", type=int, default=120, help="requests a minute for the rate-bound run")
    parser.add_argument("--prompts", type=int, default=200, help="prompts of the concurrency-bound run")
    parser.add_argument("--sequential", type=int, default=20, help="calls of the sequential baseline")
    parser.add_argument("--overhead-prompts", type=int, default=300)
    args = parser.parse_args()

    fake = RemoteTeacher(args.latency)  # before Django starts: the child is forked clean
    workdir = Path(tempfile.mkdtemp(prefix="nexus-bench-distill-"))
    system = BenchSystem(workdir, database="nexus_bench_distill", redis_db=12)
    print(f"preparing a fresh database in {workdir} ...", flush=True)
    system.fresh()
    os.environ.update(system.env)
    os.environ["NEXUS_TEACHER_ALLOWED_HOSTS"] = "127.0.0.1"
    import django

    django.setup()
    import logging

    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from nexus.teams import team_ensure_personal, user_create

    user = user_create(username="bench", password="bench-pw-123456")
    team = team_ensure_personal(user=user)
    lines = [f"# bench/distillation.py (teacher in its own process)  latency {args.latency} s, batch {args.batch}, rate {args.rate}/min, "
             f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        seq_rate, _ = sequential(fake, args.sequential)
        say(f"1. sequential SDK loop:      {seq_rate:6.2f} req/s  ({args.sequential} calls; bound 1/latency = "
            f"{1 / args.latency:.2f})")

        bound = args.batch / args.latency
        wall, row = platform_job(fake, user, team, args.prompts, batch=args.batch, rate=100_000, tag="conc")
        rate = achieved(fake.times())
        say(f"2. concurrency-bound job:    {rate:6.2f} req/s  = {rate / bound:.3f} of batch/latency ({bound:.1f}); "
            f"{rate / seq_rate:.1f}x the sequential loop; max in flight {fake.max_in_flight} (batch {args.batch}); "
            f"{row['accepted']} accepted of {args.prompts} in {wall:.1f} s")

        n = int(args.rate * 1.15)
        bound = min(args.rate / 60, args.batch / args.latency)
        wall, row = platform_job(fake, user, team, n, batch=args.batch, rate=args.rate, tag="rate")
        rate = achieved(fake.times())
        most = fake.max_in_window(60.0)
        say(f"3. rate-bound job:           {rate:6.3f} req/s  = {rate / bound:.3f} of min(rate/60, batch/latency) "
            f"({bound:.3f}); most in any 60 s: {most} (limit {args.rate}: {'ok' if most <= args.rate else 'OVER'}); "
            f"{n} requests in {wall:.1f} s")

        fake.set_latency(0.0)
        fake.reset()
        n = args.overhead_prompts
        t_engine = engine_only(fake, n, args.batch)
        t_platform, row = platform_job(fake, user, team, n, batch=args.batch, rate=100_000, tag="overhead")
        say(f"4. overhead at zero latency: engine {1000 * t_engine / n:.2f} ms/item, platform "
            f"{1000 * t_platform / n:.2f} ms/item: the platform adds {1000 * (t_platform - t_engine) / n:.2f} ms/item "
            f"(database writes, events, Redis) over {n} items")
    finally:
        fake.stop()
    lines.append(f"# load after: {os.getloadavg()[0]:.2f}")
    (ROOT / "bench" / "RESULTS-distillation.txt").write_text("\n".join(lines) + "\n")
    system.drop()


if __name__ == "__main__":
    main()
