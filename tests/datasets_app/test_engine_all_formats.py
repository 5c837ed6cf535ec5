from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasets_app.engine.formats import FORMATS, DatasetFileError, parse_dataset_file
from datasets_app.engine.readers import FILE_TYPES
from datasets_app.engine.writers import write_records


def write(tmp_path, name: str, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(rows) -> str:
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_sharegpt_variants_from_value_and_role_content(tmp_path):
    rows = [
        {"conversations": [{"from": "system", "value": "Be nice."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    parsed = parse_dataset_file(write(tmp_path, "s.jsonl", jsonl(rows)))
    assert parsed.format == "sharegpt" and parsed.detection.confidence == 1.0
    assert [m["role"] for m in parsed.records[0]["messages"]] == ["system", "user", "assistant"]
    assert parsed.records[1]["messages"][1] == {"role": "assistant", "content": "4"}


def test_openai_messages_keep_weights_and_tool_calls(tmp_path):
    call = [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2}"}}]
    rows = [{"messages": [
        {"role": "user", "content": "add 2 and 2"},
        {"role": "assistant", "content": "", "tool_calls": call, "weight": 0},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
        {"role": "assistant", "content": "It is 4.", "weight": 1},
    ]}]
    parsed = parse_dataset_file(write(tmp_path, "m.jsonl", jsonl(rows)))
    messages = parsed.records[0]["messages"]
    assert parsed.format == "chatml"
    assert messages[1]["tool_calls"] == call and messages[1]["weight"] == 0
    assert messages[2]["tool_call_id"] == "c1"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}, "two user turns"),
        ({"messages": [{"role": "user", "content": "a"}]}, "ends with a user turn"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0}]}, "weight 0"),
        ({"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}, "start with a user turn"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]}, "unknown role"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 5}]}, "weight must be 0 or 1"),
    ],
)
def test_conversations_that_cannot_be_trained_on_are_reported_with_the_reason(tmp_path, row, reason):
    good = {"messages": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "fine"}]}
    parsed = parse_dataset_file(write(tmp_path, "m.jsonl", jsonl([good, row])))
    assert len(parsed.records) == 1
    assert parsed.problems[0].line == 2 and reason in parsed.problems[0].message


def test_completion_text(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "c.jsonl", jsonl([{"text": "Once upon a time."}])))
    assert parsed.format == "completion"
    assert parsed.records[0]["messages"] == [{"role": "assistant", "content": "Once upon a time."}]


def test_csv_with_quoted_newlines_and_prompt_response_columns(tmp_path):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["prompt", "response"])
    w.writerow(["Write a haiku", "line one\nline two\nline three"])
    w.writerow(["Say hi", "hi"])
    parsed = parse_dataset_file(write(tmp_path, "d.csv", buf.getvalue()))  # csv.writer ends rows with CRLF
    assert parsed.file_type == "csv" and parsed.format == "alpaca"
    assert parsed.records[0]["messages"][1]["content"] == "line one\nline two\nline three"
    assert [r["source_line"] for r in parsed.records] == [2, 5]


def test_csv_with_a_missing_column_names_the_row(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "d.csv", "instruction,input,output\na,,b\nc,d\ne,,f\n"))
    assert len(parsed.records) == 2
    assert parsed.problems[0].line == 3 and "2 columns" in parsed.problems[0].message


def test_csv_without_the_needed_columns_is_refused(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "d.csv", "question,answer\na,b\n"))
    assert "question" in err.value.message


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "input": "", "output": "b"}] * 3), path)
    parsed = parse_dataset_file(path)
    assert parsed.file_type == "parquet" and len(parsed.records) == 3


def test_mixed_formats_in_one_file_are_flagged_per_line(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"},
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    parsed = parse_dataset_file(write(tmp_path, "mix.jsonl", jsonl(rows)))
    assert parsed.format == "alpaca" and len(parsed.records) == 2
    assert parsed.problems[0].category == "mixed_format" and parsed.problems[0].line == 3
    assert parsed.detection.confidence == pytest.approx(2 / 3, abs=0.01)


def test_a_single_5mb_line_is_read(tmp_path):
    big = {"instruction": "summarize", "output": "word " * 1_000_000}
    parsed = parse_dataset_file(write(tmp_path, "big.jsonl", json.dumps(big) + "\n" + json.dumps({"instruction": "a", "output": "b"})))
    assert len(parsed.records) == 2


def test_override_format_applies_it(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "a.jsonl", jsonl([{"text": "x", "instruction": "q", "output": "a"}])), format="completion")
    assert parsed.format == "completion"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_every_format_round_trips_through_every_file_type(tmp_path, fmt, file_type):
    source = [{"instruction": "What is 2+2?", "input": "", "output": "4", "system": "Be exact."},
              {"instruction": "Name a colour,\nplease", "input": "quoted \"text\"", "output": "blue"}]
    records = parse_dataset_file(write(tmp_path, "a.jsonl", jsonl(source))).records
    data, notes = write_records(records, fmt=fmt, file_type=file_type)
    back = parse_dataset_file(write(tmp_path, f"out.{file_type}", data), format=fmt if fmt != "completion" else "auto")
    assert back.format == fmt and len(back.records) == 2 and not back.problems
    if fmt in ("alpaca", "chatml", "sharegpt"):
        assert [r["messages"] for r in back.records] == [r["messages"] for r in records]
    else:
        assert notes == {"roles were flattened into plain text": 2}
        assert "What is 2+2?" in back.records[0]["messages"][0]["content"]


def test_utf16_gets_a_clear_error_not_mojibake(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "u.jsonl", '{"instruction": "a", "output": "b"}\n'.encode("utf-16")))
    assert "UTF-16" in err.value.message and "UTF-8" in err.value.message


def test_csv_with_an_unclosed_quote_is_an_error_at_its_line(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "q.csv", 'instruction,input,output\na,,b\nc,,"unclosed\ne,,f\n'))
    assert err.value.line == 3 and "unclosed quote" in err.value.message


def test_wrong_field_types_are_schema_problems(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "t.jsonl", jsonl([{"instruction": "a", "output": "b"},
                                                                  {"instruction": ["x"], "output": "b"}])))
    assert parsed.problems[0].category == "schema" and "instruction" in parsed.problems[0].message


def test_json_file_with_a_wrapper_object(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "w.json", json.dumps({"data": [{"instruction": "a", "output": "b"}]})))
    assert parsed.file_type == "json" and len(parsed.records) == 1


def test_writing_tool_calls_to_alpaca_says_what_was_dropped(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "add"}, {"role": "assistant", "content": "", "tool_calls": [{"id": "1"}]},
                          {"role": "tool", "content": "4", "tool_call_id": "1"}, {"role": "assistant", "content": "4"}]}]
    records = parse_dataset_file(write(tmp_path, "m.jsonl", jsonl(rows))).records
    _, notes = write_records(records, fmt="alpaca", file_type="jsonl")
    assert any("tool calls" in n for n in notes)


def test_punctuation_matters_for_exact_duplicates():
    from datasets_app.engine.dedup import find_duplicates

    recs = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "x"}]} for q in ("2+2", "2-2", "2+2 ")]
    assert find_duplicates(recs).exact_clusters == [[0, 2]]


def test_json_lines_saved_with_a_json_name_are_read_as_jsonl(tmp_path):
    parsed = parse_dataset_file(write(tmp_path, "lines.json", jsonl([{"instruction": "a", "output": "b"}] * 2)))
    assert parsed.file_type == "jsonl" and len(parsed.records) == 2
