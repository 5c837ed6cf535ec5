from __future__ import annotations

import math
import time

import pytest

from datasets_app.distillation.engine.templates import (BUILTIN_TEMPLATES, PromptTemplate, TemplateError, expand,
                                                        generation_messages, parse_generated, render,
                                                        template_fields)


def test_template_fields_are_in_order_and_unique():
    assert template_fields("{b} and {a}, then {b} again; {{literal}}") == ["b", "a"]
    assert template_fields("no placeholders") == []


def test_render_fills_placeholders_and_keeps_doubled_braces_literal():
    assert render("Hello {name}! {{not_a_field}} {{{name}}}", {"name": "Ada"}) == "Hello Ada! {not_a_field} {Ada}"


def test_render_inserts_values_as_they_are():
    # a value with braces is text, never parsed as a template again
    assert render("Say {x}", {"x": "{y.__class__}"}) == "Say {y.__class__}"


def test_render_names_a_variable_without_a_value():
    with pytest.raises(TemplateError, match="^prompt: the variable 'topic' has no value$"):
        render("Tell me about {topic}", {})


def test_render_names_the_part_of_the_template():
    with pytest.raises(TemplateError, match="^system prompt: the variable 'role' has no value$"):
        render("You are {role}", {}, where="system prompt")


@pytest.mark.parametrize("text, shown", [
    ("{a.b}", "{a.b}"),
    ("{a[0]}", "{a[0]}"),
    ("{a!r}", "{a!r}"),
    ("{a:>10}", "{a:>10}"),
    ("{0}", "{0}"),
    ("x {name.__class__.__init__.__globals__} y", "{name.__class__.__init__.__globals__}"),
    ("{a-b}", "{a-b}"),
])
def test_format_attack_placeholders_are_refused(text, shown):
    with pytest.raises(TemplateError) as info:
        render(text, {"a": "v", "name": "v"})
    assert info.value.message == f"prompt: '{shown}' is not allowed: use plain {{name}} placeholders"


def test_an_empty_placeholder_is_refused():
    with pytest.raises(TemplateError, match=r"prompt: '\{\}' at position 4 has no name"):
        render("abc {}", {})


@pytest.mark.parametrize("text, message", [
    ("Hello {name", "prompt: the '{' at position 6 is never closed"),
    ("a {b {c}", "prompt: the '{' at position 2 is never closed"),
    ("Hello name}", "prompt: the '}' at position 10 closes nothing"),
    ("{{x}", "prompt: the '}' at position 3 closes nothing"),
])
def test_unbalanced_braces_name_their_position(text, message):
    with pytest.raises(TemplateError) as info:
        template_fields(text)
    assert info.value.message.startswith(message)


def test_expand_gives_distinct_prompts_with_their_values():
    got = expand("{a}-{b}", {"a": ["1", "2"], "b": ["x", "y", "z"], "unused": ["q"]}, limit=100)
    prompts = [p for p, _ in got]
    assert sorted(prompts) == ["1-x", "1-y", "1-z", "2-x", "2-y", "2-z"]
    for prompt, values in got:
        assert prompt == f"{values['a']}-{values['b']}" and set(values) == {"a", "b"}


def test_expand_is_deterministic_for_a_seed_and_shuffled_by_it():
    variables = {"a": [str(i) for i in range(10)], "b": [str(i) for i in range(10)]}
    first = expand("{a}/{b}", variables, limit=20, seed=1)
    assert first == expand("{a}/{b}", variables, limit=20, seed=1)
    assert first != expand("{a}/{b}", variables, limit=20, seed=2)
    ordered = [f"{a}/{b}" for a in range(10) for b in range(10)][:20]
    assert [p for p, _ in first] != ordered


def test_expand_stops_at_the_limit():
    assert len(expand("{a}", {"a": list("abcdef")}, limit=3)) == 3
    assert expand("{a}", {"a": list("abc")}, limit=0) == []


def test_expand_drops_repeated_values_and_alike_renderings():
    got = expand("{a}{b}", {"a": ["x", "xy", "x"], "b": ["yz", "z"]}, limit=10)
    assert sorted(p for p, _ in got) == ["xyyz", "xyz", "xz"]  # "x"+"yz" == "xy"+"z"


def test_expand_without_placeholders_gives_the_text_once():
    assert expand("Just {{this}}", {}, limit=5) == [("Just {this}", {})]


def test_expand_refuses_a_used_variable_without_values():
    with pytest.raises(TemplateError, match="prompt: the variable 'b' has no values"):
        expand("{a} {b}", {"a": ["1"], "b": []}, limit=5)
    with pytest.raises(TemplateError, match="prompt: the variable 'b' has no values"):
        expand("{a} {b}", {"a": ["1"]}, limit=5)


def test_expand_samples_a_huge_product_lazily():
    variables = {name: [f"{name}{i}" for i in range(1000)] for name in ("a", "b", "c", "d")}  # 10^12
    started = time.perf_counter()
    got = expand("{a} {b} {c} {d}", variables, limit=500, seed=7)
    assert time.perf_counter() - started < 2  # instant in practice; materializing would never end
    assert len(got) == 500 and len({p for p, _ in got}) == 500
    assert got == expand("{a} {b} {c} {d}", variables, limit=500, seed=7)


def test_expand_gives_all_of_a_product_smaller_than_the_limit():
    got = expand("{a}{b}", {"a": list("abcdefghij"), "b": list("0123456789")}, limit=1000)
    assert len(got) == 100


@pytest.mark.parametrize("template_id", ["coding-assistant", "customer-support", "step-by-step-math", "general-qa"])
def test_builtin_templates_render_at_least_a_hundred_distinct_prompts(template_id):
    template = BUILTIN_TEMPLATES[template_id]
    assert template.id == template_id and template.builtin and template.name and template.description
    assert len(template.system_prompt) > 80 and template_fields(template.system_prompt) == []
    assert set(template_fields(template.prompt)) == set(template.variables)
    assert math.prod(len(v) for v in template.variables.values()) >= 100
    prompts = expand(template.prompt, template.variables, limit=10_000)
    assert len(prompts) >= 100
    assert all("{" not in p and "}" not in p for p, _ in prompts)


def test_builtin_variables_match_the_design():
    assert set(BUILTIN_TEMPLATES["coding-assistant"].variables) == {"language", "task", "topic"}
    assert set(BUILTIN_TEMPLATES["customer-support"].variables) == {"product", "issue", "mood"}
    assert set(BUILTIN_TEMPLATES["step-by-step-math"].variables) == {"topic", "difficulty"}
    assert set(BUILTIN_TEMPLATES["general-qa"].variables) == {"field", "style"}


def test_generation_messages_show_the_domain_examples_and_count():
    template = BUILTIN_TEMPLATES["coding-assistant"]
    system, messages = generation_messages(template=template, examples=["Write a\nPython sort.", "  "], count=5,
                                           variables={"language": "Rust"})
    assert "self-contained" in system and "never answers" in system
    content = messages[0]["content"]
    assert "Coding assistant" in content and "- Write a Python sort." in content
    assert "Write 5 new, diverse requests" in content and "numbered" in content and "nothing before or after" in content
    assert "Focus on: language: Rust" in content
    assert [m["role"] for m in messages] == ["user"]


def test_generation_messages_work_without_examples():
    template = PromptTemplate(id="t", name="Poems", description="", system_prompt="", prompt="{x}", variables={})
    _, messages = generation_messages(template=template, examples=[], count=3)
    assert "Examples" not in messages[0]["content"] and "Write 3 new" in messages[0]["content"]


def test_parse_generated_reads_messy_teacher_output():
    text = """<think>They want five.</think>Sure! Here are 5 requests:

1. "How do I merge two dictionaries in Python 3.9?"
2) Explain the difference between a process and a thread.
3.   **Write a haiku about autumn rain.**
- “What's a good way to learn Rust if I know C++?”
* 'Summarize the causes of World War I in three bullet points.'
4.
5. **Request:** Plan a 3-day trip to Kyoto on a budget.
2. Explain the difference between a process and a thread.

I hope these help! Let me know if you need more."""
    assert parse_generated(text) == [
        "How do I merge two dictionaries in Python 3.9?",
        "Explain the difference between a process and a thread.",
        "Write a haiku about autumn rain.",
        "What's a good way to learn Rust if I know C++?",
        "Summarize the causes of World War I in three bullet points.",
        "Plan a 3-day trip to Kyoto on a budget.",
    ]


def test_parse_generated_reads_a_plain_list_without_the_chatter():
    text = "Here are three new requests:\nWhat is a black hole?\n\nHow do vaccines work?\nCertainly, more on request."
    assert parse_generated(text) == ["What is a black hole?", "How do vaccines work?"]


def test_parse_generated_of_nothing_is_empty():
    assert parse_generated("") == [] and parse_generated("Here are the requests:\n\n") == []
