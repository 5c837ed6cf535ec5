"""A corpus of broken files uploaded through the API and processed by a real worker: each gets a
clear error that says where and why, none is left half-processed as `ready`, and the system
keeps working afterwards."""
from __future__ import annotations

import json

import pytest

from tests.e2e.test_finetune_e2e import wait_for
from tests.factories import alpaca_upload

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

GOOD = json.dumps({"instruction": "Say hi", "output": "Hi there!"})

# name, file name, bytes, expected status, words the error or problem must contain
CORPUS = [
    ("truncated JSON", "t.json", b'[\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "outp', "error", ["line 3", "invalid JSON"]),
    ("wrong schema", "w.jsonl", b'{"question": "a", "answer": "b"}\n{"question": "c", "answer": "d"}\n', "error", ["cannot tell the format", "question"]),
    ("binary garbage", "g.jsonl", bytes(range(256)) * 40, "error", ["binary"]),
    ("Latin-1", "l.jsonl", (GOOD + "\n" + '{"instruction": "caf\xe9", "output": "x"}\n').encode("latin-1"), "error", ["not UTF-8", "line 2"]),
    ("CSV missing a column", "c.csv", b"instruction,input,output\na,,b\nc,d\n", "ready", ["line 3", "2 columns"]),
    ("CSV with an unclosed quote", "q.csv", b"instruction,input,output\na,,b\nc,,\"open\ne,,f\n", "error", ["line 3", "unclosed quote"]),
    ("UTF-16", "u.jsonl", (GOOD + "\n").encode("utf-16"), "error", ["UTF-16"]),
    ("one bad JSONL line in the middle", "m.jsonl", (GOOD + "\n{oops\n" + GOOD.replace("hi", "bye") + "\n").encode(), "ready", ["line 2", "invalid JSON"]),
    ("mixed formats", "x.jsonl", (GOOD + "\n" + json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n").encode(), "ready", ["line 2", "looks like chatml"]),
    ("a single 5 MB line", "big.jsonl", (json.dumps({"instruction": "summarize", "output": "word " * 1_000_000}) + "\n" + GOOD + "\n").encode(), "ready", ["line 1", "more than the maximum"]),
]


def upload(api, name: str, raw: bytes) -> dict:
    r = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=raw, name=name)}, format="multipart")
    assert r.status_code == 201, r.content
    return r.json()


def finished(api, dataset_id: int) -> dict:
    return wait_for(lambda: api.get(f"/api/v1/finetune/datasets/{dataset_id}").json(),
                    lambda d: d["status"] in ("ready", "error"), 180, f"dataset {dataset_id} to be processed")


def test_every_broken_file_gets_a_clear_error_and_the_system_keeps_working(celery_worker_process, base_model, api):
    from django.core.files.storage import default_storage

    uploaded = [(case, upload(api, case[1], case[2])) for case in CORPUS]
    for (label, _, raw, expected, words), d in uploaded:
        body = finished(api, d["id"])
        assert body["status"] == expected, (label, body["error_message"], body["validation_errors"][:3])
        text = body["error_message"] if expected == "error" else " ".join(e["message"] for e in body["validation_errors"])
        for word in words:
            assert word in text, (label, word, text[:500])
        if expected == "error":
            assert body["num_examples"] == 0 and body["statistics"] == {}
        else:
            assert body["num_examples"] >= 1 and body["num_invalid"] >= 1
        with default_storage.open(d["file_path"], "rb") as fh:
            assert fh.read() == raw, label  # the original upload is kept as it came

    empty = api.post("/api/v1/finetune/datasets", {"file": alpaca_upload(raw=b"", name="e.jsonl")}, format="multipart")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]

    good = finished(api, upload(api, "ok.jsonl", ((GOOD + "\n") * 3).encode())["id"])
    assert good["status"] == "ready" and good["num_examples"] == 3
