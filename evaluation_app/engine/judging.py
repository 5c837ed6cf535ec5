"""One comparison judged by an LLM in both orders, `rounds` times, through a distillation teacher
client (OpenAI, Anthropic or a deployed model). Django-free.

A malformed answer is asked again once, then the pair is recorded as an error, never guessed.
429, 5xx, timeouts and dropped connections are retried with backoff (Retry-After honoured) a few
times, then the pair is an error; a wrong key or unknown model (TeacherFatal) ends the run."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from datasets_app.distillation.engine.run import backoff_s
from datasets_app.distillation.engine.types import TeacherClient, TeacherRejected, TeacherRetry
from evaluation_app.engine.judge import JudgeParseError, PairJudgement, combine, judge_messages, parse_verdict, reconcile

RETRIES = 3  # transient failures of one request before the pair is given up
PARSE_RETRIES = 1  # a malformed answer is asked again once


@dataclass
class PairOutcome:
    judgement: PairJudgement | None = None
    error: str = ""
    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    rounds: list[PairJudgement] = field(default_factory=list)


class Stopped(Exception):
    """The run was asked to stop between two requests."""


def _ask(client: TeacherClient, out: PairOutcome, *, prompt: str, a: str, b: str, criteria: list[str],
         rubric: dict[str, str], system_prompt: str, should_stop: Callable[[], bool], rng: random.Random,
         sleep=time.sleep):  # noqa: ANN001
    system, messages = judge_messages(prompt=prompt, response_a=a, response_b=b, criteria=criteria, rubric=rubric,
                                      system_prompt=system_prompt)
    malformed, transient = 0, 0
    while True:
        if should_stop():
            raise Stopped
        out.calls += 1
        try:
            answer = client.complete(messages, system=system)
        except TeacherRetry as exc:
            transient += 1
            if transient > RETRIES:
                raise JudgeParseError(f"{exc.message} ({transient} attempts)") from exc
            delay = exc.retry_after_s if exc.retry_after_s is not None else backoff_s(transient, 1.0, 30.0, rng)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                if should_stop():
                    raise Stopped from exc
                sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            continue
        except TeacherRejected as exc:
            raise JudgeParseError(exc.message) from exc
        out.tokens_in += answer.tokens_in
        out.tokens_out += answer.tokens_out
        try:
            return parse_verdict(answer.text, criteria)
        except JudgeParseError as exc:
            malformed += 1
            if malformed > PARSE_RETRIES:
                raise JudgeParseError(f"malformed judge answer twice: {exc.message}") from exc


def judge_pair(client: TeacherClient, *, prompt: str, base: str, finetuned: str, criteria: list[str],
               rubric: dict[str, str], system_prompt: str = "", rounds: int = 1,
               should_stop: Callable[[], bool] = lambda: False, rng: random.Random | None = None,
               sleep=time.sleep) -> PairOutcome:  # noqa: ANN001
    """Each round asks with the base response as A, then with the fine-tuned one as A; the rounds
    are combined (engine/judge.py). TeacherFatal passes through; Stopped when asked to stop."""
    rng = rng or random.Random()
    out = PairOutcome()
    try:
        for _ in range(rounds):
            base_first = _ask(client, out, prompt=prompt, a=base, b=finetuned, criteria=criteria, rubric=rubric,
                              system_prompt=system_prompt, should_stop=should_stop, rng=rng, sleep=sleep)
            finetuned_first = _ask(client, out, prompt=prompt, a=finetuned, b=base, criteria=criteria, rubric=rubric,
                                   system_prompt=system_prompt, should_stop=should_stop, rng=rng, sleep=sleep)
            out.rounds.append(reconcile(base_first, finetuned_first))
    except JudgeParseError as exc:
        out.error = exc.message
        return out
    out.judgement = combine(out.rounds)
    return out


TONE_SYSTEM = ("You check the tone of an assistant's reply. Answer with one word: yes if the reply has the "
               "required tone, no if it does not.")


def tone_verdict(client: TeacherClient, *, prompt: str, response: str, tone: str, sleep=time.sleep) -> bool | None:  # noqa: ANN001
    """A custom test case's `required_tone` (10.3.3), asked of the judge: True / False, or None when
    the judge gave no usable answer after a retry (the case then says the tone was not checked)."""
    question = (f"Required tone: {tone.replace('_', ' ')}\n\nUser message:\n{prompt}\n\nAssistant reply:\n{response}"
                "\n\nDoes the reply have the required tone? Answer yes or no.")
    for attempt in range(1 + RETRIES):
        try:
            answer = client.complete([{"role": "user", "content": question}], system=TONE_SYSTEM, max_tokens=8,
                                     temperature=0.0)
        except TeacherRetry as exc:
            sleep(exc.retry_after_s if exc.retry_after_s is not None else min(30.0, 2.0 ** attempt))
            continue
        except TeacherRejected:
            return None
        word = (answer.text or "").strip().lower().lstrip("*\"' ")
        if word.startswith("yes"):
            return True
        if word.startswith("no"):
            return False
    return None
