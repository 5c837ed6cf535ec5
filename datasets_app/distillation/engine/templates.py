"""Prompt templates: `{name}` placeholders filled from lists of values, the built-in templates,
seeded expansion of their combinations, and self-instruct prompt generation for when the
combinations are fewer than wanted. Django-free.

Templates are user text, so they are parsed here rather than handed to str.format: only plain
`{name}` placeholders exist; `{a.b}`, `{a[0]}`, `{a!r}` and `{a:>10}` are refused, so a template
can never reach an object's attributes (the classic format-string attack) or misbehave on a spec.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from .modes import split_reasoning

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Below this many combinations (or twice the limit) the whole index range is shuffled; above
# it indices are drawn one by one, so a 10^12 product costs no more than `limit` draws.
SHUFFLE_ALL_BELOW = 100_000


class TemplateError(ValueError):
    """A template that cannot be rendered. `message` is for users and names the part
    ("prompt: ...", "system prompt: ...")."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class PromptTemplate:
    id: str
    name: str
    description: str
    system_prompt: str
    prompt: str
    variables: dict[str, list[str]] = field(default_factory=dict)
    builtin: bool = False


def _parse(text: str, where: str) -> list[str | tuple[str]]:
    """Literal strings and ("name",) placeholders, in order."""
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == "{" and text.startswith("{{", i):
            literal.append("{")
            i += 2
        elif char == "}" and text.startswith("}}", i):
            literal.append("}")
            i += 2
        elif char == "{":
            end = text.find("}", i + 1)
            nested = text.find("{", i + 1)
            if end == -1 or nested != -1 and nested < end:
                raise TemplateError(f"{where}: the '{{' at position {i} is never closed (write '{{{{' for a literal brace)")
            name = text[i + 1:end]
            if not _IDENTIFIER.fullmatch(name):
                shown = text[i:end + 1]
                if not name.strip():
                    raise TemplateError(f"{where}: '{shown}' at position {i} has no name: use {{name}} placeholders")
                raise TemplateError(f"{where}: '{shown}' is not allowed: use plain {{name}} placeholders")
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((name,))
            i = end + 1
        elif char == "}":
            raise TemplateError(f"{where}: the '}}' at position {i} closes nothing (write '}}}}' for a literal brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def template_fields(text: str, *, where: str = "prompt") -> list[str]:
    """The placeholder names of `text`, in order of first use, each once."""
    seen: dict[str, None] = {}
    for part in _parse(text, where):
        if isinstance(part, tuple):
            seen.setdefault(part[0])
    return list(seen)


def _fill(parts: list[str | tuple[str]], values: dict[str, str], where: str) -> str:
    out = []
    for part in parts:
        if isinstance(part, tuple):
            value = values.get(part[0])
            if value is None:
                raise TemplateError(f"{where}: the variable '{part[0]}' has no value")
            out.append(str(value))  # inserted as is: braces in a value are never parsed again
        else:
            out.append(part)
    return "".join(out)


def render(text: str, values: dict[str, str], *, where: str = "prompt") -> str:
    return _fill(_parse(text, where), values, where)


def expand(text: str, variables: dict[str, list[str]], *, limit: int, seed: int = 0,
           where: str = "prompt") -> list[tuple[str, dict[str, str]]]:
    """Up to `limit` distinct prompts from the cartesian product of the values of the variables
    `text` uses, each with the values it was made from, in an order shuffled by `seed` (the
    same seed gives the same list)."""
    parts = _parse(text, where)
    names = template_fields(text, where=where)
    choices: list[list[str]] = []
    for name in names:
        values = list(dict.fromkeys(str(v) for v in variables.get(name) or ()))  # distinct, in order
        if not values:
            raise TemplateError(f"{where}: the variable '{name}' has no values")
        choices.append(values)
    if limit <= 0:
        return []
    total = math.prod(len(c) for c in choices)
    rng = random.Random(seed)

    def combination(index: int) -> dict[str, str]:
        # mixed-radix digits of the index, the last variable varying fastest
        picked: dict[str, str] = {}
        for name, values in zip(reversed(names), reversed(choices)):
            index, digit = divmod(index, len(values))
            picked[name] = values[digit]
        return {name: picked[name] for name in names}

    if total <= max(SHUFFLE_ALL_BELOW, 2 * limit):
        order = list(range(total))
        rng.shuffle(order)
        indices = iter(order)
    else:
        # limit < total / 2: each draw is new with probability > 1/2, so this ends in < 2*limit
        # draws on average; the cap only guards against templates whose combinations render alike.
        def draws():
            seen: set[int] = set()
            for _ in range(10 * limit + 1000):
                index = rng.randrange(total)
                if index not in seen:
                    seen.add(index)
                    yield index
        indices = draws()
    out: list[tuple[str, dict[str, str]]] = []
    rendered: set[str] = set()
    for index in indices:
        values = combination(index)
        prompt = _fill(parts, values, where)
        if prompt in rendered:  # "{a}{b}" can render two combinations alike
            continue
        rendered.add(prompt)
        out.append((prompt, values))
        if len(out) >= limit:
            break
    return out


# --- built-in templates -----------------------------------------------------------------------

BUILTIN_TEMPLATES: dict[str, PromptTemplate] = {t.id: t for t in [
    PromptTemplate(
        id="coding-assistant",
        name="Coding assistant",
        description="Programming help: code, tests, explanations and reviews in several languages.",
        system_prompt=(
            "You are an expert software engineer and a patient teacher. Give correct, idiomatic, "
            "runnable code in fenced code blocks with the language named, explain the key "
            "decisions briefly, mention edge cases and complexity where they matter, and prefer "
            "the standard library over extra dependencies."
        ),
        prompt="I'm working in {language}. Could you {task} for {topic}?",
        variables={
            "language": ["Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "C++"],
            "task": [
                "write a well-tested function",
                "show an idiomatic implementation with comments",
                "write unit tests",
                "explain the common pitfalls and show correct code",
                "compare two approaches and implement the better one",
                "write a short, readable implementation and explain its complexity",
            ],
            "topic": [
                "parsing a CSV file with a header row",
                "retrying an HTTP request with exponential backoff",
                "finding duplicate entries in a list",
                "validating an email address",
                "reading a large file line by line",
                "an LRU cache",
                "merging two sorted lists",
                "a moving average over a stream of numbers",
                "converting a timestamp between time zones",
                "debouncing repeated events",
                "a thread-safe counter",
                "binary search over a sorted array",
            ],
        },
        builtin=True,
    ),
    PromptTemplate(
        id="customer-support",
        name="Customer support",
        description="Support conversations: a customer's problem with a product, in various moods.",
        system_prompt=(
            "You are a friendly, professional customer support agent. Acknowledge the customer's "
            "feelings in one sentence, then solve the problem with clear, numbered steps. Never "
            "invent policies, prices or order details: say what you would check and ask for the "
            "information you need. Stay calm and polite whatever the customer's tone, and end by "
            "offering further help."
        ),
        prompt="[{mood} customer] Hi, I use {product} and {issue}. What can I do?",
        variables={
            "product": [
                "your mobile banking app", "your smart thermostat", "your grocery delivery service",
                "your project management software", "your video streaming subscription",
                "your wireless headphones", "your cloud backup service", "your fitness tracker",
            ],
            "issue": [
                "I was charged twice this month",
                "I can't log in even after resetting my password",
                "it keeps crashing since the last update",
                "my order hasn't arrived after two weeks",
                "I want to cancel my subscription",
                "it stopped syncing with my phone",
                "the notifications stopped working",
                "I need an invoice with my company's VAT number",
            ],
            "mood": ["frustrated", "polite", "confused", "angry", "impatient"],
        },
        builtin=True,
    ),
    PromptTemplate(
        id="step-by-step-math",
        name="Step-by-step math",
        description="Math word problems written and solved with every step shown.",
        system_prompt=(
            "You are a careful math tutor. Solve problems step by step: state what is given and "
            "what is asked, number each step, show the arithmetic, check the result, and end with "
            "a line 'The answer is ...'."
        ),
        prompt="Write a {difficulty} word problem about {topic}, then solve it step by step.",
        variables={
            "topic": [
                "percentages", "fractions", "ratios and proportions", "linear equations",
                "systems of two equations", "quadratic equations", "areas of shapes", "volumes",
                "speed, distance and time", "simple interest", "compound interest", "probability",
                "averages", "unit conversions", "prime factorization", "combinatorics",
            ],
            "difficulty": [
                "simple elementary-school", "middle-school", "high-school", "tricky high-school",
                "SAT-style", "first-year university", "competition-style",
            ],
        },
        builtin=True,
    ),
    PromptTemplate(
        id="general-qa",
        name="General Q&A",
        description="Clear explanations across fields of knowledge, in several question styles.",
        system_prompt=(
            "You are a knowledgeable, precise assistant. Answer accurately and clearly for a "
            "curious non-specialist: lead with the direct answer, then explain with a concrete "
            "example. Say when something is uncertain or debated, and do not make up facts or "
            "sources."
        ),
        prompt="{style} in {field}.",
        variables={
            "field": [
                "astronomy", "biology", "chemistry", "physics", "economics", "history", "geography",
                "psychology", "computer science", "medicine", "linguistics", "philosophy",
                "climate science", "law", "music theory", "architecture",
            ],
            "style": [
                "Explain a fundamental concept",
                "Compare two ideas that are often confused",
                "Describe a common misconception and correct it",
                "Tell the story of a key discovery",
                "Explain how a practical technique works",
                "Answer a question a curious teenager might ask",
                "Summarize an open question that experts still debate",
            ],
        },
        builtin=True,
    ),
]}


# --- self-instruct prompt generation ----------------------------------------------------------

GENERATION_SYSTEM = (
    "You write realistic requests that users send to an AI assistant, to build a training "
    "dataset. Each request is self-contained: it includes every detail needed to answer it, "
    "and never refers to 'the above', 'this file' or anything not in it. Requests differ from "
    "the examples and from each other in topic, wording, length and difficulty. Write only the "
    "requests, never answers."
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def generation_messages(*, template: PromptTemplate, examples: list[str], count: int,
                        variables: dict[str, str] | None = None) -> tuple[str, list[dict]]:
    """(system, messages) asking a teacher for `count` new user requests in the template's domain."""
    lines = [f"Domain: {template.name}" + (f" - {template.description}" if template.description else "")]
    if template.system_prompt.strip():
        lines.append(f"The assistant works under these instructions:\n{_one_line(template.system_prompt)}")
    if variables:
        lines.append("Focus on: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in variables.items()))
    shown = [_one_line(e) for e in examples if e.strip()]
    if shown:
        lines.append("Examples of requests:\n" + "\n".join(f"- {e}" for e in shown))
    lines.append(
        f"Write {count} new, diverse requests in this domain. Put each on one line, numbered "
        f"1. to {count}. Reply with the numbered list only, nothing before or after it."
    )
    return GENERATION_SYSTEM, [{"role": "user", "content": "\n\n".join(lines)}]


_ITEM = re.compile(r"^\s*(?:\(?\d{1,4}[.):]|[-*\u2022])(?:\s+(.*)|$)")
_PREAMBLE = re.compile(
    r"^(?:here(?:'s| is| are)\b|sure\b|certainly\b|of course\b|okay\b|ok\b|below\b|i hope\b|let me know\b|"
    r"these\b|feel free\b)|:$", re.IGNORECASE)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_BOLD_LABEL = re.compile(r"^\*\*[^*]{1,40}:\*\*\s*|^\*\*([^*]+)\*\*$")


def _tidy(item: str) -> str:
    item = item.strip()
    bold = _BOLD_LABEL.match(item)
    if bold:  # "**Request:** text" -> "text"; "**text**" -> "text"
        item = bold.group(1) if bold.group(1) is not None else item[bold.end():]
    item = item.strip()
    while len(item) >= 2 and _QUOTE_PAIRS.get(item[0]) == item[-1]:
        item = item[1:-1].strip()
    return item


def parse_generated(text: str) -> list[str]:
    """The requests of a teacher's reply: numbered ("1." / "1)") or bulleted lines when there are
    any, else every line that is not a preamble. Quotes around a request are removed; empty
    lines and repeats are dropped."""
    lines = split_reasoning(text or "")[1].splitlines()
    items = [m.group(1) or "" for m in map(_ITEM.match, lines) if m]
    if not items:  # a plain list: every line but the chatter around it
        items = [line for line in lines if not _PREAMBLE.search(line.strip())]
    out: dict[str, None] = {}
    for item in items:
        item = _tidy(item)
        if item:
            out.setdefault(item)
    return list(out)
