from __future__ import annotations

import json

import pytest

from datasets_app.engine.formats import DatasetFileError, parse_dataset_file


def write(tmp_path, name: str, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_alpaca_jsonl_becomes_conversations_with_system_and_input(tmp_path):
    path = write(tmp_path, "a.jsonl", "\n".join([
        json.dumps({"instruction": "Translate", "input": "hola", "output": "hello", "system": "Be brief."}),
        json.dumps({"instruction": "Say hi", "output": "Hi!"}),
    ]))
    parsed = parse_dataset_file(path)
    assert parsed.format == "alpaca"
    assert parsed.records[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]
    assert [m["role"] for m in parsed.records[1]["messages"]] == ["user", "assistant"]


def test_json_array_with_bom_and_crlf_is_read(tmp_path):
    body = json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}], indent=1).replace("\n", "\r\n")
    parsed = parse_dataset_file(write(tmp_path, "a.json", b"\xef\xbb\xbf" + body.encode()))
    assert len(parsed.records) == 2 and not parsed.problems


def test_bad_jsonl_line_in_the_middle_is_reported_with_its_line_and_excluded(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(5)]
    lines[2] = '{"instruction": "broken", "output": '
    parsed = parse_dataset_file(write(tmp_path, "a.jsonl", "\n".join(lines)))
    assert len(parsed.records) == 4
    assert len(parsed.problems) == 1
    assert parsed.problems[0].line == 3
    assert parsed.problems[0].category == "parse"
    assert "line 3" in parsed.problems[0].message


def test_record_with_missing_output_and_empty_response_are_listed_by_category(tmp_path):
    path = write(tmp_path, "a.jsonl", "\n".join([
        json.dumps({"instruction": "ok", "output": "fine"}),
        json.dumps({"instruction": "no answer"}),
        json.dumps({"instruction": "blank", "output": "   "}),
    ]))
    parsed = parse_dataset_file(path, format="alpaca")
    assert [(p.line, p.category) for p in parsed.problems] == [(2, "schema"), (3, "empty")]
    assert "output" in parsed.problems[0].message


def test_truncated_json_array_names_line_and_column(tmp_path):
    path = write(tmp_path, "a.json", '[\n {"instruction": "a", "output": "b"},\n {"instruction": "c", "out')
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(path)
    assert "line 3" in err.value.message and err.value.line == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02\x03binary", "binary"),
        ("{\"instruction\": \"caf\xe9\", \"output\": \"x\"}\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_unreadable_files_get_a_clear_reason(tmp_path, content, expected):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "bad.jsonl", content))
    assert expected in err.value.message


def test_latin1_error_names_the_line(tmp_path):
    content = (json.dumps({"instruction": "a", "output": "b"}) + "\n").encode() + '{"instruction": "caf\xe9"}'.encode("latin-1")
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "bad.jsonl", content))
    assert err.value.line == 2


def test_file_whose_format_cannot_be_told_says_what_it_saw(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "a.jsonl", '{"prompt": 1}\n{"prompt": 2}\n'))
    assert "cannot tell the format" in err.value.message and "prompt" in err.value.message


def test_file_with_no_usable_record_names_the_first_problem(tmp_path):
    with pytest.raises(DatasetFileError) as err:
        parse_dataset_file(write(tmp_path, "a.jsonl", '{"instruction": "a"}\n{"instruction": "b", "output": ""}\n'),
                           format="alpaca")
    assert "none of the 2 records" in err.value.message and "line 1" in err.value.message
