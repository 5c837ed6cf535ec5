"""Reading dataset files (JSONL, JSON array, CSV, Parquet) into raw records. Django-free.

Every raw record comes with where it was found: a 1-based line for JSONL, a 1-based row for CSV
(the header is line 1; a quoted newline makes a row span lines), a 0-based record index for JSON arrays and
Parquet. A file that cannot be read at all raises DatasetFileError with the place and the reason.
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

FILE_TYPES = ("jsonl", "json", "csv", "parquet")


def _without_paths(text: str) -> str:
    """A library's message without the absolute paths it names (the user sees it)."""
    return re.sub(r"(?<![\w.:/])/(?:[^\s'\"/]+/)+([^\s'\"/]*)", r"…/\1", text)


class DatasetFileError(Exception):
    """The file as a whole cannot be read; the message says where and why."""

    def __init__(self, message: str, *, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass
class RawRecord:
    index: int
    line: int | None
    obj: Any
    error: str | None = None

    @property
    def where(self) -> str:
        return f"line {self.line}" if self.line else f"record {self.index}"


def sniff_file_type(name: str, head: bytes) -> str:
    lower = name.lower()
    if lower.endswith(".parquet") or head[:4] == b"PAR1":
        return "parquet"
    if lower.endswith(".csv"):
        return "csv"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if lower.endswith(".json") or stripped.startswith(b"["):
        return "json"
    return "jsonl"


def decode_text(raw: bytes, name: str) -> str:
    if not raw.strip():
        raise DatasetFileError(f"{name} is empty: there are no records to read.")
    for bom, encoding in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                          (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise DatasetFileError(f"{name} is {encoding} (it starts with a {encoding} byte-order mark); "
                                   "re-save it as UTF-8.", line=1)
    if b"\x00" in raw[:8192]:
        raise DatasetFileError(f"{name} looks binary (it contains NUL bytes), not a JSON, JSONL or CSV text file.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DatasetFileError(
            f"{name} is not UTF-8: byte 0x{raw[exc.start]:02x} at line {line} (offset {exc.start}) cannot be decoded. "
            "Re-save the file as UTF-8 (it may be Latin-1 or Windows-1252).",
            line=line,
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl(text: str) -> Iterator[RawRecord]:
    index = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield RawRecord(index, lineno, json.loads(line))
        except json.JSONDecodeError as exc:
            yield RawRecord(index, lineno, None, f"invalid JSON at column {exc.colno}: {exc.msg}")
        index += 1


def _json_array(text: str, name: str) -> Iterator[RawRecord]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetFileError(f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", line=exc.lineno) from exc
    if isinstance(data, dict):
        # {"data": [...]} and similar wrappers: take the one list of records inside
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetFileError(f"{name}: expected a JSON array of records at the top level, found an object")
        data = lists[0]
    if not isinstance(data, list):
        raise DatasetFileError(f"{name}: expected a JSON array of records, found {type(data).__name__}")
    for index, obj in enumerate(data):
        yield RawRecord(index, None, obj)


def _csv(text: str, name: str) -> Iterator[RawRecord]:
    csv.field_size_limit(1 << 30)  # a single cell may hold a long document
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DatasetFileError(f"{name} is empty: there are no records to read.") from None
    except csv.Error as exc:
        raise DatasetFileError(f"{name}: unreadable CSV header: {exc}", line=1) from exc
    header = [h.strip() for h in header]
    if len(set(header)) != len(header):
        raise DatasetFileError(f"{name}: the CSV header repeats a column name: {header}", line=1)
    index = 0
    while True:
        row_start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            # a broken quote swallows what follows it: nothing after this point can be trusted
            raise DatasetFileError(f"{name}: unreadable CSV at line {row_start}: {exc} (check for an unclosed quote)",
                                   line=row_start) from exc
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield RawRecord(index, row_start, None, f"has {len(row)} columns, the header has {len(header)} ({', '.join(header)})")
        else:
            yield RawRecord(index, row_start, dict(zip(header, row)))
        index += 1


def _parquet(path: Path, name: str) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
        # pyarrow's message names the server's path: say what is wrong in the file's own terms
        reason = str(exc).split(". ")[0].replace(str(path), name)
        raise DatasetFileError(f"{name}: not a readable Parquet file ({_without_paths(reason)})") from exc
    for index, obj in enumerate(table.to_pylist()):
        yield RawRecord(index, None, obj)


def _looks_like_jsonl(text: str) -> bool:
    try:
        json.loads(text)
        return False
    except json.JSONDecodeError:
        pass
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def read_raw_records(path: str | Path, *, name: str | None = None, file_type: str | None = None) -> tuple[str, Iterator[RawRecord]]:
    path = Path(path)
    label = name or path.name
    with path.open("rb") as fh:
        head = fh.read(4096)
    kind = file_type or sniff_file_type(label, head)
    if kind not in FILE_TYPES:
        raise DatasetFileError(f"Unknown file type '{kind}'; supported: {', '.join(FILE_TYPES)}.")
    if kind == "parquet":
        return kind, _parquet(path, label)
    text = decode_text(path.read_bytes(), label)
    if kind == "csv":
        return kind, _csv(text, label)
    if kind == "json" and not text.lstrip().startswith("[") and _looks_like_jsonl(text):
        kind = "jsonl"  # JSON Lines saved with a .json name
    if kind == "json":
        return "json", _json_array(text, label)
    return "jsonl", _jsonl(text)
