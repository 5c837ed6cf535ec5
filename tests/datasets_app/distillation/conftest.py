from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from tests.fakes.teachers import FakeTeacher

KEY = "sk-test-Very-Secret-Teacher-Key-9d41"
JUDGE_MODEL = "judge-model"
WORDS = ("river stone lantern harbor meadow copper violet orbit canyon ember falcon glacier saffron timber "
         "quartz willow marble thunder cedar pebble").split()


def varied_answer(messages: list[dict], model: str) -> str:
    """A distinct, deterministic answer per prompt (so the duplicate filters see different texts);
    the judge model answers with a score that the test can steer through the prompt."""
    user = [m for m in messages if m.get("role") == "user"][-1]["content"]
    text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user)
    if model == JUDGE_MODEL:
        score = 2 if "LOWSCORE" in text else 9
        return json.dumps({"score": score, "reason": "judged by the fake"})
    digest = hashlib.sha256(f"{model}|{text}".encode()).digest()
    words = [WORDS[b % len(WORDS)] for b in digest[:24]]
    return f"Here is what {model} thinks: " + " ".join(words) + "."


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=KEY, models=["gpt-4o-mini", "claude-haiku-4-5", "gpt-4o", JUDGE_MODEL],
                     responder=varied_answer) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _teachers_on_loopback(settings) -> None:
    settings.NEXUS_TEACHER_ALLOWED_HOSTS = "api.openai.com,api.anthropic.com,127.0.0.1"


def openai_teacher(fake: FakeTeacher, **extra) -> dict:
    return {"provider": "openai", "model": "gpt-4o-mini", "api_key": KEY, "base_url": fake.openai_base_url,
            "temperature": 0.7, "max_tokens": 256, **extra}


def anthropic_teacher(fake: FakeTeacher, **extra) -> dict:
    return {"provider": "anthropic", "model": "claude-haiku-4-5", "api_key": KEY, "base_url": fake.anthropic_base_url,
            "temperature": 0.7, "max_tokens": 256, **extra}


def run_job(job_id: int, worker: str = "test@host", held_by: str = "") -> None:
    """What the worker's run task does (the job kit's claim, then the run), in this process."""
    from datasets_app.distillation.jobs import DISTILLATION
    from nexus.jobs import claim, kind_get

    assert claim(DISTILLATION, job_id, worker=worker, held_by=held_by)
    kind_get("distillation").call("run", job_id)
