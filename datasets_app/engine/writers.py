"""Writing normalized conversations back in every format and file type. Django-free."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable

from datasets_app.engine.formats import FORMATS
from datasets_app.engine.readers import FILE_TYPES

CONTENT_TYPES = {"jsonl": "application/jsonl", "json": "application/json", "csv": "text/csv",
                 "parquet": "application/vnd.apache.parquet"}


class ConversionError(ValueError):
    pass


def _split(messages: list[dict]) -> tuple[str, list[dict]]:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    return system, [m for m in messages if m["role"] != "system"]


def to_format(messages: list[dict], fmt: str) -> tuple[dict[str, Any], str | None]:
    """One record in `fmt`, and a note when the conversion had to drop something."""
    record, note = _to_format(messages, fmt)
    if fmt in ("alpaca", "completion") and any(k in m for m in messages for k in ("weight", "tool_calls")) or \
            fmt in ("alpaca", "completion") and any(m["role"] == "tool" for m in messages):
        note = "; ".join(filter(None, [note, f"weights/tool calls are not part of {fmt}"]))
    return record, note


def _to_format(messages: list[dict], fmt: str) -> tuple[dict[str, Any], str | None]:
    system, body = _split(messages)
    if fmt == "chatml":
        return {"messages": messages}, None
    if fmt == "sharegpt":
        names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "tool"}
        conv = [{"from": names[m["role"]], "value": m["content"]} for m in messages]
        dropped = any(k in m for m in messages for k in ("weight", "tool_calls"))
        return {"conversations": conv}, ("weights/tool calls are not part of ShareGPT" if dropped else None)
    if fmt == "completion":
        if len(body) == 1 and body[0]["role"] == "assistant" and not system:
            return {"text": body[0]["content"]}, None
        text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
        return {"text": text}, "roles were flattened into plain text"
    if fmt == "alpaca":
        if len(body) == 1 and body[0]["role"] == "assistant":
            return {"instruction": "", "input": "", "output": body[0]["content"], **({"system": system} if system else {})}, \
                "a completion has no instruction"
        users = [m for m in body if m["role"] == "user"]
        answers = [m for m in body if m["role"] == "assistant"]
        record = {"instruction": users[-1]["content"], "input": "", "output": answers[-1]["content"]}
        if system:
            record["system"] = system
        note = "only the last exchange of a multi-turn conversation is kept" if len(users) > 1 else None
        return record, note
    raise ConversionError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")


# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...) and worse).
# OWASP's advice for CSV output: prefix such a cell with a single quote, which shows the text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text, never evaluates (JSON for lists and objects)."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_records(records: Iterable[dict], *, fmt: str, file_type: str) -> tuple[bytes, dict[str, int]]:
    """Serialize normalized records; returns the bytes and a count of lossy conversions by reason."""
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if file_type not in FILE_TYPES:
        raise ConversionError(f"unknown file type '{file_type}'; choose one of {', '.join(FILE_TYPES)}")
    rows: list[dict] = []
    notes: dict[str, int] = {}
    for record in records:
        row, note = to_format(record["messages"], fmt)
        if record.get("tools"):
            if fmt in ("chatml", "sharegpt"):
                row["tools"] = record["tools"]
            else:
                note = "; ".join(filter(None, [note, f"tool definitions are not part of {fmt}"]))
        rows.append(row)
        if note:
            notes[note] = notes.get(note, 0) + 1
    if file_type == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(), notes
    if file_type == "json":
        return json.dumps(rows, ensure_ascii=False, indent=1).encode(), notes
    if file_type == "csv":
        columns: list[str] = []
        for r in rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO(newline="")
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: csv_cell(v) for k, v in r.items()})
        return buf.getvalue().encode(), notes
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue(), notes
