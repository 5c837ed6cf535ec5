"""A custom case's required_tone, asked of a judge through the OpenAI protocol (a local server that
speaks it, with its failure modes)."""
from __future__ import annotations

from datasets_app.distillation.engine.teachers import teacher_client
from datasets_app.distillation.engine.types import TeacherSpec
from evaluation_app.engine.judging import tone_verdict
from tests.fakes.teachers import FakeTeacher

KEY = "judge-key"


def _verdict(fake: FakeTeacher, response: str) -> bool | None:
    client = teacher_client(TeacherSpec(provider="openai", model="gpt-4o", api_key=KEY,
                                        base_url=fake.openai_base_url, timeout_s=10))
    try:
        return tone_verdict(client, prompt="I want to cancel my subscription", response=response,
                            tone="helpful_neutral", sleep=lambda s: None)
    finally:
        client.close()


def _by_reply(messages, model):  # noqa: ANN001
    asked = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else str(messages[-1]["content"])
    return "No." if "whatever" in asked else "Yes"


def test_the_judge_says_whether_the_reply_has_the_tone_and_is_asked_what_the_case_requires():
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=_by_reply) as fake:
        assert _verdict(fake, "Sure. Go to Settings > Billing > Cancel; your plan ends on the renewal date.") is True
        assert _verdict(fake, "whatever, do it yourself") is False
        asked = fake.requests[-1]["prompt"] if "prompt" in fake.requests[-1] else str(fake.requests[-1])
        assert "helpful neutral" in asked and "cancel my subscription" in asked


def test_a_rate_limited_judge_is_waited_for_and_an_unusable_answer_is_not_a_verdict():
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], script=[("rate_limit", 0.01), "ok"],
                     responder=lambda m, model: "yes") as fake:
        assert _verdict(fake, "Sure, here is how.") is True
        assert fake.count(status=429) == 1
    with FakeTeacher(api_key=KEY, models=["gpt-4o"], responder=lambda m, model: "The tone is fine overall") as fake:
        assert _verdict(fake, "Sure, here is how.") is None
