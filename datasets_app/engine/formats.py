"""Dataset formats <-> the one internal conversation form. Django-free.

Internal form, one record per example::

    {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str,
                   # optional, carried through: "weight": 0|1, "tool_calls": [...], "name", "tool_call_id"}]}

Alpaca (instruction/input/output[/system], and prompt/response columns), ShareGPT (conversations
with from/value or role/content), ChatML / OpenAI messages (with per-message weight and tool
calls), and completion (text; a single assistant message) are read into it and written back.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets_app.engine.readers import DatasetFileError, read_raw_records

FORMATS = ("alpaca", "sharegpt", "chatml", "completion")
FORMAT_CHOICES = ("auto", *FORMATS)
DETECT_SAMPLE = 500

ROLE_ALIASES = {
    "human": "user", "user": "user", "prompter": "user", "question": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}
CARRIED_KEYS = ("weight", "tool_calls", "name", "tool_call_id")

__all__ = ["DatasetFileError", "FORMATS", "FORMAT_CHOICES", "ParsedDataset", "RecordProblem", "detect_format",
           "parse_dataset_file", "record_to_messages"]


@dataclass
class RecordProblem:
    index: int  # 0-based record index in the file
    line: int | None  # 1-based line (JSONL) or row (CSV) in the file, when known
    category: str  # parse | schema | empty | mixed_format | structure | too_long | too_short
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Detection:
    format: str | None
    confidence: float
    evidence: str
    votes: dict[str, int] = field(default_factory=dict)


@dataclass
class ParsedDataset:
    format: str
    file_type: str = "jsonl"
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    total_records: int = 0
    detection: Detection | None = None


def record_format(obj: Any) -> str | None:
    """The format one raw record looks like, from its keys."""
    if not isinstance(obj, dict):
        return None
    keys = set(obj)
    if "messages" in keys:
        return "chatml"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and ("output" in keys or "response" in keys):
        return "alpaca"
    if "prompt" in keys and ("response" in keys or "completion" in keys or "output" in keys):
        return "alpaca"
    if "text" in keys:
        return "completion"
    return None


def detect_format(objs: list[Any]) -> Detection:
    votes = Counter(f for f in (record_format(o) for o in objs) if f)
    sampled = len(objs)
    if not votes:
        keys = Counter(k for o in objs if isinstance(o, dict) for k in o)
        seen = ", ".join(k for k, _ in keys.most_common(8)) or "none"
        return Detection(None, 0.0, f"no record of {sampled} sampled has the keys of a known format (keys seen: {seen})")
    fmt, n = votes.most_common(1)[0]
    evidence = {
        "alpaca": "instruction/output (or prompt/response) keys",
        "sharegpt": "a 'conversations' list",
        "chatml": "a 'messages' list",
        "completion": "a 'text' field",
    }[fmt]
    others = ", ".join(f"{k}: {v}" for k, v in votes.items() if k != fmt)
    return Detection(fmt, round(n / sampled, 3), f"{n} of {sampled} sampled records have {evidence}"
                     + (f"; others look like {others}" if others else ""), dict(votes))


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = [p.get("text", "") for p in value if isinstance(p, dict) and p.get("type", "text") == "text"]
        if len(parts) == len(value):
            return "".join(parts)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{what} must be a string, got {type(value).__name__}")


def _alpaca(obj: dict) -> list[dict]:
    instruction = obj.get("instruction", obj.get("prompt"))
    output = obj.get("output", obj.get("response", obj.get("completion")))
    if instruction is None:
        raise ValueError("missing required field 'instruction' (or 'prompt')")
    if output is None:
        raise ValueError("missing required field 'output' (or 'response')")
    instruction = _text(instruction, "field 'instruction'").strip()
    extra = _text(obj.get("input"), "field 'input'").strip()
    output = _text(output, "field 'output'").strip()
    system = _text(obj.get("system"), "field 'system'").strip()
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    messages.append({"role": "assistant", "content": output})
    return messages


def _message(raw: Any, i: int, role_key: str, content_key: str) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"message {i} must be an object, got {type(raw).__name__}")
    if role_key not in raw:
        raise ValueError(f"message {i} has no '{role_key}'")
    role = ROLE_ALIASES.get(str(raw[role_key]).strip().lower())
    if role is None:
        raise ValueError(f"message {i} has unknown role '{raw[role_key]}'")
    msg = {"role": role, "content": _text(raw.get(content_key), f"message {i} '{content_key}'")}
    for key in CARRIED_KEYS:
        if key in raw and raw[key] is not None:
            msg[key] = raw[key]
    if "weight" in msg and msg["weight"] not in (0, 1):
        raise ValueError(f"message {i} weight must be 0 or 1, got {msg['weight']!r}")
    return msg


def _conversation(items: Any, key: str) -> list[dict]:
    if isinstance(items, str):  # CSV cells carry the list as JSON text
        try:
            items = json.loads(items)
        except json.JSONDecodeError as exc:
            raise ValueError(f"'{key}' is text that is not a JSON list of messages ({exc.msg})") from exc
    if not isinstance(items, list):
        raise ValueError(f"'{key}' must be a list of messages, got {type(items).__name__}")
    out = []
    for i, raw in enumerate(items):
        if isinstance(raw, dict) and "from" in raw:
            out.append(_message(raw, i, "from", "value"))
        else:
            out.append(_message(raw, i, "role", "content"))
    return out


def record_to_messages(obj: Any, fmt: str) -> list[dict]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    if fmt == "alpaca":
        return _alpaca(obj)
    if fmt == "sharegpt":
        return _conversation(obj.get("conversations"), "conversations")
    if fmt == "chatml":
        return _conversation(obj.get("messages"), "messages")
    if fmt == "completion":
        return [{"role": "assistant", "content": _text(obj.get("text"), "field 'text'")}]
    raise ValueError(f"unknown format '{fmt}'")


def structure_problem(messages: list[dict]) -> tuple[str, str] | None:
    """(category, reason) when a conversation cannot be trained on as it is."""
    if not messages:
        return "empty", "the conversation has no messages"
    for i, m in enumerate(messages):
        if m["role"] == "user" and not m["content"].strip():
            return "empty", f"message {i} (user) is empty"
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            return "empty", f"message {i} (assistant) is empty: the response has nothing to learn from"
    if len(messages) == 1 and messages[0]["role"] == "assistant":
        return None  # a completion: plain text to learn
    if any(m["role"] == "system" for m in messages[1:]):
        return "structure", "a system message may only come first"
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user":
        return "structure", "the conversation must start with a user turn (after an optional system message)"
    if body[-1]["role"] != "assistant":
        return "structure", f"the conversation ends with a {body[-1]['role']} turn, not an assistant turn"
    previous = None
    for i, m in enumerate(body):
        if m["role"] == previous and m["role"] != "tool":
            return "structure", f"roles do not alternate: two {m['role']} turns in a row at turn {i}"
        if m["role"] == "tool" and previous not in ("assistant", "tool"):
            return "structure", f"a tool result at turn {i} does not follow an assistant tool call"
        previous = m["role"]
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in body):
        return "structure", "every assistant message has weight 0: nothing to learn from"
    return None


def parse_dataset_file(path: str | Path, *, format: str = "auto", name: str | None = None) -> ParsedDataset:
    """Read, detect (or check) the format, normalize and validate the structure of every record."""
    path = Path(path)
    label = name or path.name
    if format not in FORMAT_CHOICES:
        raise DatasetFileError(f"Unknown format '{format}'. Choose one of: {', '.join(FORMAT_CHOICES)}.")
    file_type, raws = read_raw_records(path, name=label)
    raw_list = list(raws)
    if not raw_list:
        raise DatasetFileError(f"{label} contains no records.")
    sample = [r.obj for r in raw_list[:DETECT_SAMPLE] if r.error is None]
    detection = detect_format(sample)
    if format == "auto":
        if detection.format is None:
            first_error = next((r for r in raw_list if r.error), None)
            if first_error is not None and not sample:
                raise DatasetFileError(f"{label}: no record could be read; first problem at {first_error.where}: "
                                       f"{first_error.error}", line=first_error.line)
            raise DatasetFileError(f"{label}: cannot tell the format: {detection.evidence}. Choose a format explicitly.")
        fmt = detection.format
    else:
        fmt = format
    result = ParsedDataset(format=fmt, file_type=file_type, total_records=len(raw_list), detection=detection)
    for raw in raw_list:
        if raw.error:
            result.problems.append(RecordProblem(raw.index, raw.line, "parse", f"{raw.where}: {raw.error}"))
            continue
        try:
            messages = record_to_messages(raw.obj, fmt)
        except ValueError as exc:
            looks_like = record_format(raw.obj)
            if looks_like is not None and looks_like != fmt:
                result.problems.append(RecordProblem(raw.index, raw.line, "mixed_format",
                                                     f"{raw.where}: looks like {looks_like}, but the file is {fmt}"))
            else:
                result.problems.append(RecordProblem(raw.index, raw.line, "schema", f"{raw.where}: {exc}"))
            continue
        problem = structure_problem(messages)
        if problem:
            result.problems.append(RecordProblem(raw.index, raw.line, problem[0], f"{raw.where}: {problem[1]}"))
            continue
        record = {"messages": messages, "source_index": raw.index, "source_line": raw.line}
        if isinstance(raw.obj, dict) and raw.obj.get("tools"):
            record["tools"] = raw.obj["tools"]  # OpenAI function definitions travel with the conversation
        result.records.append(record)
    if not result.records:
        first = result.problems[0]
        raise DatasetFileError(
            f"{label}: none of the {result.total_records} records is usable as {fmt}; first problem: {first.message}",
            line=first.line,
        )
    return result

