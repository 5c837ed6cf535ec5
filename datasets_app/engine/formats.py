"""Reading dataset files into the one internal conversation form. Django-free.

Internal form: one record per example, ``{"messages": [{"role": ..., "content": ...}, ...]}``
with roles system / user / assistant. Problems are reported with the line (JSONL, and JSON
via the decoder's position) or the record index, never silently dropped.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

SUPPORTED_FORMATS = ("alpaca",)
FORMAT_CHOICES = ("auto", "alpaca", "sharegpt", "chatml", "completion")


class DatasetFileError(Exception):
    """The file as a whole cannot be read; the message says where and why."""

    def __init__(self, message: str, *, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class RecordProblem:
    index: int  # 0-based record index in the file
    line: int | None  # 1-based line in the file, when known
    category: str  # parse | schema | empty
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ParsedDataset:
    format: str
    records: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem] = field(default_factory=list)
    total_records: int = 0


def _decode(raw: bytes, name: str) -> str:
    if not raw.strip():
        raise DatasetFileError(f"{name} is empty: there are no records to read.")
    if b"\x00" in raw[:8192]:
        raise DatasetFileError(f"{name} looks binary (it contains NUL bytes), not a JSON/JSONL text file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetFileError(
            f"{name} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} (offset {exc.start}). "
            "Re-save the file as UTF-8.",
            line=line,
        ) from exc
    return text.replace("\r\n", "\n")


def _iter_json_objects(text: str, name: str) -> Iterator[tuple[int, int | None, Any, str | None]]:
    """Yield (index, line, object, parse_error) for a JSON array or a JSONL file."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFileError(
                f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", line=exc.lineno
            ) from exc
        for index, obj in enumerate(data):
            yield index, None, obj, None
        return
    index = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield index, lineno, None, f"invalid JSON at column {exc.colno}: {exc.msg}"
        else:
            yield index, lineno, obj, None
        index += 1


def detect_format(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "instruction" in obj and "output" in obj:
        return "alpaca"
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "chatml"
    if "text" in obj:
        return "completion"
    return None


def alpaca_to_messages(obj: Any) -> list[dict[str, str]]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object with instruction/output, got {type(obj).__name__}")
    missing = [key for key in ("instruction", "output") if key not in obj]
    if missing:
        raise ValueError(f"missing required field(s): {', '.join(missing)}")
    for key in ("instruction", "input", "output", "system"):
        if key in obj and obj[key] is not None and not isinstance(obj[key], str):
            raise ValueError(f"field '{key}' must be a string, got {type(obj[key]).__name__}")
    instruction = (obj.get("instruction") or "").strip()
    extra = (obj.get("input") or "").strip()
    output = (obj.get("output") or "").strip()
    if not instruction:
        raise ValueError("field 'instruction' is empty")
    if not output:
        raise ValueError("field 'output' is empty: the response has nothing to learn from")
    messages: list[dict[str, str]] = []
    if (obj.get("system") or "").strip():
        messages.append({"role": "system", "content": obj["system"].strip()})
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    messages.append({"role": "assistant", "content": output})
    return messages


def parse_dataset_file(path: str | Path, *, format: str = "auto", name: str | None = None) -> ParsedDataset:
    path = Path(path)
    label = name or path.name
    text = _decode(path.read_bytes(), label)
    if format not in FORMAT_CHOICES:
        raise DatasetFileError(f"Unknown format '{format}'. Choose one of: {', '.join(FORMAT_CHOICES)}.")
    result = ParsedDataset(format=format)
    for index, line, obj, parse_error in _iter_json_objects(text, label):
        result.total_records += 1
        where = f"line {line}" if line else f"record {index}"
        if parse_error:
            result.problems.append(RecordProblem(index, line, "parse", f"{where}: {parse_error}"))
            continue
        if result.format == "auto":
            detected = detect_format(obj)
            if detected is None:
                result.problems.append(
                    RecordProblem(index, line, "schema", f"{where}: cannot tell the format from keys {sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__}")
                )
                continue
            result.format = detected
        if result.format not in SUPPORTED_FORMATS:
            raise DatasetFileError(
                f"{label}: format '{result.format}' (detected at {where}) is not supported yet; supported: "
                f"{', '.join(SUPPORTED_FORMATS)}."
            )
        try:
            messages = alpaca_to_messages(obj)
        except ValueError as exc:
            category = "empty" if "empty" in str(exc) else "schema"
            result.problems.append(RecordProblem(index, line, category, f"{where}: {exc}"))
            continue
        result.records.append({"messages": messages, "source_index": index, "source_line": line})
    if result.total_records == 0:
        raise DatasetFileError(f"{label} contains no records.")
    if not result.records:
        first = result.problems[0].message if result.problems else "no usable records"
        raise DatasetFileError(
            f"{label}: none of the {result.total_records} records is usable; first problem: {first}",
            line=result.problems[0].line if result.problems else None,
        )
    return result
