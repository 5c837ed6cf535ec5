"""Two people streaming from one llama.cpp server at once both get their whole answer (the
server's default interrupts the first stream when a second request arrives)."""
from __future__ import annotations

import json
import threading

import requests

from deployments_app.engine import serving


def _stream(port: int, prompt: str, out: list) -> None:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "stream": True, "temperature": 0,
            "logit_bias": {"2": -100}}
    chunks, finish = 0, None
    with requests.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, stream=True, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                choice = json.loads(line[6:])["choices"][0]
                chunks += bool(choice["delta"].get("content"))
                finish = choice.get("finish_reason") or finish
    out.append((chunks, finish))


def test_concurrent_streams_are_queued_not_cut_off(demo_model_files, tmp_path):
    _, gguf = demo_model_files
    port = serving.free_port()
    spec = serving.ServerSpec(model_path=str(gguf), log_path=str(tmp_path / "server.log"), port=port, n_threads=1)
    assert ["--n_threads_batch", "1"] == spec.command()[spec.command().index("--n_threads_batch"):][:2]
    pid = serving.spawn(spec)
    try:
        serving.wait_healthy(pid=pid, host="127.0.0.1", port=port, log_path=spec.log_path, timeout=120)
        results: list = []
        threads = [threading.Thread(target=_stream, args=(port, f"Count to {n}.", results)) for n in (5, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=180)
        assert len(results) == 2
        assert all(finish == "length" and chunks >= 20 for chunks, finish in results), results
    finally:
        serving.stop(pid, port)
    assert not serving.is_alive(pid, port)
