from __future__ import annotations

import pytest

from datasets_app.distillation.engine.filters import DuplicateIndex, QualityConfig, answer_problem
from datasets_app.distillation.engine.modes import (MODE_HELP, MODES, REASONING_INSTRUCTION, Call, ModeConfig,
                                                    ModeError, Record, Source, build_record, filter_target,
                                                    judge_target, next_call, split_reasoning)
from datasets_app.distillation.engine.types import Answer

QUESTION = "What is 15% of 80?"
ORIGINAL = "15% of 80 is 12."


def done_with(**answers: str | Answer) -> dict[str, dict]:
    return {step: (a if isinstance(a, Answer) else Answer(text=a)).as_dict() for step, a in answers.items()}


def run(source: Source, config: ModeConfig, replies: dict[str, str]) -> tuple[list[Call], dict[str, dict]]:
    """Answers every call the item asks for with the canned reply of its step."""
    done: dict[str, dict] = {}
    calls = []
    while (call := next_call(source, done, config)) is not None:
        calls.append(call)
        done[call.step] = Answer(text=replies[call.step]).as_dict()
    return calls, done


def test_every_mode_has_help():
    assert MODES == ("response", "rephrase", "expand", "negative", "back_translate")
    assert set(MODE_HELP) == set(MODES) and all(MODE_HELP.values())


def test_unknown_mode_is_refused():
    with pytest.raises(ModeError, match="Unknown mode 'summarize'"):
        ModeConfig(mode="summarize")


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<reasoning>15% is 0.15; 0.15*80 = 12</reasoning>\nThe answer is 12.", "15% is 0.15; 0.15*80 = 12", "The answer is 12."),
    ("<think>\nhmm\n</think>\n\n12", "hmm", "12"),
    ("<THINKING>a</THINKING>b", "a", "b"),
    ("<think>one</think>mid<think>two</think>end", "one\n\ntwo", "midend"),
    ("plain answer", "", "plain answer"),
    ("<think>cut off while thinking", "cut off while thinking", ""),
    ("reasoning from a template that opened the tag</think>The answer.", "reasoning from a template that opened the tag", "The answer."),
])
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


# --- response -------------------------------------------------------------------------------------

def test_response_asks_once_with_the_users_system_prompt():
    config = ModeConfig(system_prompt="You are a math tutor.")
    call = next_call(Source(QUESTION), {}, config)
    assert call == Call("answer", "You are a math tutor.", [{"role": "user", "content": QUESTION}])
    assert next_call(Source(QUESTION), done_with(answer="12"), config) is None


def test_response_sends_the_input_after_the_prompt():
    call = next_call(Source("Summarize:", input="A long text."), {}, ModeConfig())
    assert call.messages == [{"role": "user", "content": "Summarize:\n\nA long text."}]


def test_response_record_keeps_the_users_system_prompt_not_ours():
    config = ModeConfig(system_prompt="You are a math tutor.", include_reasoning=True)
    call = next_call(Source(QUESTION), {}, config)
    assert call.system == f"You are a math tutor.\n\n{REASONING_INSTRUCTION}"
    assert "step by step" in call.system and "<reasoning>" in call.system
    record = build_record(Source(QUESTION), done_with(answer="<reasoning>r</reasoning>12"), config)
    assert record.system == "You are a math tutor."


def test_chain_of_thought_record_keeps_the_reasoning_in_plain_prose():
    text = ("<reasoning>Let me solve this step by step:\n1. 15% means 15/100 = 0.15\n2. Multiply: 0.15 x 80 = 12"
            "</reasoning>\nThe answer is 12.")
    record = build_record(Source(QUESTION), done_with(answer=text), ModeConfig(include_reasoning=True))
    assert record.output == ("Let me solve this step by step:\n1. 15% means 15/100 = 0.15\n2. Multiply: 0.15 x 80 = 12"
                             "\n\nThe answer is 12.")
    assert "<reasoning>" not in record.output
    assert record.reasoning.startswith("Let me solve")
    assert record.messages() == [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": record.output}]


def test_chain_of_thought_uses_the_apis_separate_reasoning_when_the_text_has_none():
    answer = Answer(text="The answer is 12.", reasoning="0.15 * 80 = 12")
    record = build_record(Source(QUESTION), done_with(answer=answer), ModeConfig(include_reasoning=True))
    assert record.output == "0.15 * 80 = 12\n\nThe answer is 12."


def test_without_reasoning_requested_any_reasoning_is_dropped():
    answer = Answer(text="<think>scratch work</think>The answer is 12.", reasoning="more scratch")
    record = build_record(Source(QUESTION), done_with(answer=answer), ModeConfig())
    assert record.output == "The answer is 12." and record.reasoning == ""


def test_response_record_keeps_a_records_own_system_when_the_job_has_none():
    source = Source(QUESTION, system="Be terse.")
    assert next_call(source, {}, ModeConfig()).system == "Be terse."
    assert build_record(source, done_with(answer="12 it is."), ModeConfig()).system == "Be terse."
    assert build_record(source, done_with(answer="12 it is."), ModeConfig(system_prompt="Job.")).system == "Job."


def test_record_messages_with_system_and_input():
    record = Record(instruction="Summarize:", output="Short.", input="Long text.", system="Be brief.")
    assert record.messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarize:\n\nLong text."},
        {"role": "assistant", "content": "Short."},
    ]
    assert judge_target(record) == ("Summarize:\n\nLong text.", "Short.")


def test_an_item_without_a_prompt_is_refused():
    with pytest.raises(ModeError, match="no prompt"):
        next_call(Source("  "), {}, ModeConfig())


def test_a_record_needs_its_answers():
    with pytest.raises(ModeError, match="no 'answer' answer yet"):
        build_record(Source(QUESTION), {}, ModeConfig())


# --- augmentation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rephrase", "expand", "negative", "back_translate"])
def test_augmentation_modes_need_a_record_with_an_output(mode):
    with pytest.raises(ModeError, match=f"'{mode}' mode rewrites dataset records"):
        next_call(Source(QUESTION), {}, ModeConfig(mode=mode))


def test_rephrase_asks_for_a_new_phrasing_and_keeps_the_original_output():
    source = Source(QUESTION, output=ORIGINAL, system="Sys.")
    calls, done = run(source, ModeConfig(mode="rephrase"),
                      {"rephrase": 'Here is the rephrased instruction:\n"How much is fifteen percent of 80?"'})
    assert [c.step for c in calls] == ["rephrase"]
    assert "same request and meaning" in calls[0].system and "Do not answer" in calls[0].system
    assert QUESTION in calls[0].messages[0]["content"]
    record = build_record(source, done, ModeConfig(mode="rephrase"))
    assert record == Record(instruction="How much is fifteen percent of 80?", output=ORIGINAL, system="Sys.")


def test_expand_asks_for_the_reasoning_and_keeps_the_final_answer():
    source = Source(QUESTION, output=ORIGINAL)
    expanded = "15% means 0.15.\n0.15 x 80 = 12.\nSo 15% of 80 is 12."
    calls, done = run(source, ModeConfig(mode="expand"), {"expand": f"<think>easy</think>{expanded}"})
    assert [c.step for c in calls] == ["expand"]
    assert "reasoning steps" in calls[0].system and "same final answer" in calls[0].system
    content = calls[0].messages[0]["content"]
    assert f"<question>\n{QUESTION}\n</question>" in content and f"<answer>\n{ORIGINAL}\n</answer>" in content
    record = build_record(source, done, ModeConfig(mode="expand"))
    assert record == Record(instruction=QUESTION, output=expanded)


NEGATIVE_REPLY = ("<wrong_answer>\n15% of 80 is 8, because 80 / 15 is about 5 and 5 + 3 = 8.\n</wrong_answer>\n"
                  "<explanation>\nNo. The answer divides instead of multiplying by 0.15.\n</explanation>")


def test_negative_builds_a_critique_example_and_keeps_the_wrong_answer_as_rejected():
    source = Source(QUESTION, output=ORIGINAL)
    calls, done = run(source, ModeConfig(mode="negative"), {"negative": NEGATIVE_REPLY})
    assert [c.step for c in calls] == ["negative"]
    assert "plausible but wrong" in calls[0].system and "<wrong_answer>" in calls[0].system
    record = build_record(source, done, ModeConfig(mode="negative"))
    wrong = "15% of 80 is 8, because 80 / 15 is about 5 and 5 + 3 = 8."
    assert record.instruction == f"{QUESTION}\n\nProposed answer:\n{wrong}\n\nIs this answer correct?"
    assert record.output == f"No. The answer divides instead of multiplying by 0.15.\n\n{ORIGINAL}"
    assert record.rejected == wrong and record.input == ""


def test_negative_puts_the_input_inside_the_question():
    source = Source("Translate to German:", input="Good morning", output="Guten Morgen")
    reply = "Wrong answer:\nGuten Nacht\nExplanation:\nNo. That means good night."
    record = build_record(source, done_with(negative=reply), ModeConfig(mode="negative"))
    assert record.instruction.startswith("Translate to German:\n\nGood morning\n\nProposed answer:\nGuten Nacht")
    assert record.messages()[0]["content"] == record.instruction


def test_negative_without_its_two_parts_is_a_mode_error():
    with pytest.raises(ModeError, match="<wrong_answer> and <explanation>"):
        build_record(Source(QUESTION, output=ORIGINAL), done_with(negative="It is 8."), ModeConfig(mode="negative"))


def test_back_translate_translates_there_and_back_and_keeps_the_original_output():
    source = Source(QUESTION, input="", output=ORIGINAL)
    config = ModeConfig(mode="back_translate", pivot_language="German")
    calls, done = run(source, config, {"translate": "Was sind 15 % von 80?", "back": "What are 15 percent of 80?"})
    assert [c.step for c in calls] == ["translate", "back"]
    assert "into German" in calls[0].system and calls[0].messages[0]["content"] == f"<text>\n{QUESTION}\n</text>"
    assert "into English" in calls[1].system
    assert calls[1].messages[0]["content"] == "<text>\nWas sind 15 % von 80?\n</text>"
    record = build_record(source, done, config)
    assert record == Record(instruction="What are 15 percent of 80?", output=ORIGINAL)


def test_back_translate_defaults_to_french():
    assert ModeConfig(mode="back_translate").pivot_language == "French"
    assert "into French" in next_call(Source(QUESTION, output=ORIGINAL), {}, ModeConfig(mode="back_translate")).system


def test_back_translate_resumes_from_a_done_translate():
    source = Source(QUESTION, output=ORIGINAL)
    config = ModeConfig(mode="back_translate")
    done = done_with(translate="<think>easy</think>Translation:\n« Combien font 15 % de 80 ? »")
    call = next_call(source, done, config)
    assert call.step == "back"
    assert call.messages[0]["content"] == "<text>\nCombien font 15 % de 80 ?\n</text>"  # cleaned before sending
    done["back"] = Answer(text="How much is 15% of 80?").as_dict()
    assert next_call(source, done, config) is None
    assert build_record(source, done, config).instruction == "How much is 15% of 80?"


def test_back_translate_record_needs_both_steps():
    with pytest.raises(ModeError, match="no 'back' answer yet"):
        build_record(Source(QUESTION, output=ORIGINAL), done_with(translate="x"), ModeConfig(mode="back_translate"))


# --- what the filters look at ---------------------------------------------------------------------

def test_filter_target_of_a_rephrase_is_the_new_instruction_so_a_copy_is_an_echo():
    source = Source(QUESTION, output=ORIGINAL)
    config = ModeConfig(mode="rephrase")
    prompt, answer = filter_target(source, done_with(rephrase=f'"{QUESTION}"'), config)
    assert prompt == QUESTION and answer.text == QUESTION
    index = DuplicateIndex()
    index.add_prompt(source.prompt, key=0)
    assert index.check(answer.text).reason == "echo"


def test_filter_target_of_back_translate_carries_a_cut_off_translation():
    source = Source(QUESTION, output=ORIGINAL)
    done = done_with(translate=Answer(text="Combien", finish_reason="length", tokens_out=10), back="How much")
    _, answer = filter_target(source, done, ModeConfig(mode="back_translate"))
    assert answer_problem(QUESTION, answer, QualityConfig()).reason == "cut_off"


def test_filter_target_of_chain_of_thought_counts_the_reasoning_but_checks_the_answer():
    config = ModeConfig(include_reasoning=True)
    done = done_with(answer=Answer(text="12", reasoning="0.15 times 80 gives 12 exactly"))
    prompt, answer = filter_target(Source(QUESTION), done, config)
    assert prompt == QUESTION and answer.text == "<reasoning>\n0.15 times 80 gives 12 exactly\n</reasoning>\n\n12"
    assert answer_problem(prompt, answer, QualityConfig()) is None  # long enough with its reasoning
    refusing = done_with(answer=Answer(text="I can't help with that.", reasoning="This looks unsafe to me"))
    assert answer_problem(QUESTION, filter_target(Source(QUESTION), refusing, config)[1], QualityConfig()).reason == "refusal"


def test_filter_target_without_reasoning_requested_is_the_answer_alone():
    done = done_with(answer="<think>long scratch work here</think>12")
    _, answer = filter_target(Source(QUESTION), done, ModeConfig())
    assert answer.text == "12"
    assert answer_problem(QUESTION, answer, QualityConfig()).reason == "too_short"


def test_judge_target_of_a_negative_example_is_the_critique():
    source = Source(QUESTION, output=ORIGINAL)
    record = build_record(source, done_with(negative=NEGATIVE_REPLY), ModeConfig(mode="negative"))
    prompt, response = judge_target(record)
    assert prompt.endswith("Is this answer correct?") and response.startswith("No.")
