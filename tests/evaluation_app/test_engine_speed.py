"""The speed test against real llama.cpp servers on the demo model: every cell timed with the
warm-up left out, the output length forced and counted, llama.cpp's own per-request timings
matched to the right requests and agreeing with ours, servers gone afterwards."""
from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

import pytest

from deployments_app.engine import serving
from evaluation_app.engine import speed

# different lengths, so a request matched to the other prompt's log block would show
PROMPTS = ["Say hi.", "Write a short story about a river that flows through a quiet valley and the people there."]
CONFIG = dict(test_prompts=PROMPTS, output_lengths=[8, 16], batch_sizes=[1, 2], num_iterations=2, warmup_iterations=1)
# one thread: the tests share two cores with other work, and a second llama.cpp thread waiting
# on a busy core turns milliseconds into seconds


def _requests_seen(log_path: str) -> int:
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" 200', Path(log_path).read_text(errors="replace")))


def _gone(pid: int) -> bool:
    """No such process any more (reaped), or the pid now belongs to something else."""
    try:
        return b"llama_cpp.server" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def speed_run(demo_model_files, random_adapter_gguf, tmp_path_factory):
    _, gguf = demo_model_files
    progress = []
    targets = [speed.Target("base", str(gguf), n_threads=1),
               speed.Target("base + adapter", str(gguf), lora_path=str(random_adapter_gguf), n_threads=1)]
    results = speed.run_speed_test(targets, speed.SpeedConfig(**CONFIG), workdir=tmp_path_factory.mktemp("speed"),
                                   on_progress=lambda done, total, message: progress.append((done, total, message)))
    return results, progress, gguf


def test_every_cell_is_timed_and_the_warm_up_is_left_out(speed_run):
    results, progress, _ = speed_run
    assert list(results) == ["base", "base + adapter"]
    for result in results.values():
        cells = {(c["output_length"], c["batch_size"]): c for c in result["cells"]}
        assert set(cells) == {(8, 1), (8, 2), (16, 1), (16, 2)}
        for (length, batch), cell in cells.items():
            assert cell["n"] == 2 * batch == cell["time_to_first_token_ms"]["n"] == cell["tokens_per_second"]["n"]
            assert cell["throughput_tokens_per_second"]["n"] == 2  # one per recorded round
            assert cell["throughput_tokens_per_second"]["median"] > 0
        recorded = len(result["requests"])
        assert recorded == sum(c["n"] for c in result["cells"]) == result["overall"]["n"] == 12
        server = result["server"]
        assert server["warmup_requests"] == 1 + 2 + 1 + 2 and server["probe_requests"] == len(PROMPTS)
        # the server saw the probes and the warm-up too; only the recorded rounds are in the numbers
        assert _requests_seen(server["log_path"]) == server["probe_requests"] + server["warmup_requests"] + recorded
    assert progress[-1][:2] == (24, 24) and [p[0] for p in progress] == list(range(1, 25))
    assert progress[0][2] == "base: 8 tokens x 1 concurrent, warm-up 1/1"


def test_the_output_length_is_forced_and_counted(speed_run):
    from llama_cpp import Llama

    results, _, gguf = speed_run
    vocab = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    eos = vocab.token_eos()
    vocab.close()
    for result in results.values():
        assert result["server"]["forcing"]["method"] == "logit_bias" and eos in result["server"]["forcing"]["token_ids"]
        for r in result["requests"]:
            assert r["finish_reason"] == "length"
            assert r["completion_tokens"] == r["streamed_chunks"] == r["output_length"]
        for cell in result["cells"]:
            assert cell["completion_tokens"]["min"] == cell["completion_tokens"]["max"] == cell["output_length"]


def test_llama_cpp_timings_are_matched_to_the_right_requests(speed_run):
    results, _, _ = speed_run
    for result in results.values():
        tokens = result["server"]["prompt_tokens"]
        assert tokens[0] < tokens[1]
        assert result["server"]["llama_timings_unmatched"] == 0
        for r in result["requests"]:
            llama = r["llama"]
            assert r["prompt_tokens"] == tokens[r["prompt_index"]]
            # what llama.cpp accounted for is this request's prompt, not the other one's
            assert llama["reused_prompt_tokens"] + llama["evaluated_prompt_tokens"] == r["prompt_tokens"]
            one_token_prompt = 1 if llama["evaluated_prompt_tokens"] == 1 else 0
            assert llama["eval_runs"] - one_token_prompt == r["output_length"] - 1
            assert 0 <= r["prompt_cache_reuse"] < 1
        # the chat template's opening is shared by both prompts: llama.cpp keeps it in the KV cache
        assert result["overall"]["prompt_cache_reuse"] > 0.2


def test_our_times_agree_with_llama_cpp_own_clock(speed_run):
    results, _, _ = speed_run
    ratios_all_in, ratios_compute = [], []
    for result in results.values():
        for r in result["requests"]:
            llama = r["llama"]
            assert 0 < r["ttft_ms"] < r["total_ms"] and r["tokens_per_second"] > 0
            assert r["ttft_ms"] >= llama["prompt_eval_ms"]  # the first token needs the prompt evaluated
            assert r["total_ms"] >= llama["total_ms"]  # llama.cpp's clock starts after the request arrived
            ms_per_token = llama["eval_ms"] / llama["eval_runs"] + llama["overhead_ms_per_token"]
            ratios_all_in.append(r["tokens_per_second"] * ms_per_token / 1000)
            ratios_compute.append(r["tokens_per_second"] / llama["eval_tokens_per_second"])
    # llama.cpp's "eval time" is the forward passes alone: a client can only be slower than that
    assert statistics.median(ratios_compute) <= 1.02
    # with the per-token sampling and streaming time its own total clock also saw, the two agree
    assert abs(statistics.median(ratios_all_in) - 1) < 0.05, sorted(ratios_all_in)


def test_peak_memory_and_the_adapter_in_the_server(speed_run):
    results, _, gguf = speed_run
    base, adapter = results["base"], results["base + adapter"]
    file_mb = Path(gguf).stat().st_size / 2**20
    for result in (base, adapter):
        assert result["peak_memory_mb"] > file_mb and "VmHWM" in result["peak_memory_note"]
    lora = adapter["server"]["lora_path"]
    adapter_log = Path(adapter["server"]["log_path"]).read_text(errors="replace")
    assert f"loading lora adapter from '{lora}'" in adapter_log
    assert int(re.search(r"loaded (\d+) tensors from lora file", adapter_log)[1]) == 2 * 5 * 30  # 5 modules x 30 layers
    assert "llama_adapter_lora_init" not in Path(base["server"]["log_path"]).read_text(errors="replace")
    diff = speed.compare(base, adapter)
    assert [(c["output_length"], c["batch_size"]) for c in diff["cells"]] == [(8, 1), (8, 2), (16, 1), (16, 2)]
    assert all(diff["overall"][m] is not None for m in speed.METRICS) and diff["peak_memory_mb"] is not None


def test_servers_are_gone_after_the_run(speed_run):
    results, _, _ = speed_run
    for result in results.values():
        assert _gone(result["server"]["pid"])


def test_should_stop_stops_the_run_and_its_server(demo_model_files, tmp_path, monkeypatch):
    _, gguf = demo_model_files
    pids, progress = [], []
    spawn = serving.spawn
    monkeypatch.setattr(serving, "spawn", lambda spec: pids.append(spawn(spec)) or pids[-1])
    with pytest.raises(speed.Stopped):
        speed.run_speed_test([speed.Target("base", str(gguf), n_threads=1), speed.Target("never", str(gguf))],
                             speed.SpeedConfig(**CONFIG), workdir=tmp_path, should_stop=lambda: bool(progress),
                             on_progress=lambda *a: progress.append(a))
    assert len(pids) == 1 and len(progress) == 1  # stopped after the first round, before the second target
    assert _gone(pids[0])
    (log,) = tmp_path.glob("speed-*.log")
    assert _requests_seen(str(log)) == len(PROMPTS) + 1


def test_a_running_server_is_timed_by_url(demo_model_files, tmp_path):
    """Like a deployment's arm: no model file, so min_tokens forces the length; memory from its pid."""
    _, gguf = demo_model_files
    port = serving.free_port()
    log = str(tmp_path / "server.log")
    spec = serving.ServerSpec(model_path=str(gguf), log_path=log, port=port, n_threads=1, verbose=True, api_key="k-1",
                              extra={"interrupt_requests": "False"})
    pid = serving.spawn(spec)
    try:
        deadline = time.monotonic() + 5
        while not serving.is_alive(pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        serving.wait_healthy(pid=pid, host=spec.host, port=port, log_path=log, api_key="k-1")
        config = speed.SpeedConfig(test_prompts=PROMPTS, output_lengths=[12], batch_sizes=[2], num_iterations=1,
                                   warmup_iterations=0)
        url = f"http://127.0.0.1:{port}/v1"
        results = speed.run_speed_test([speed.Target("arm A", base_url=url, api_key="k-1", pid=pid, log_path=log),
                                        speed.Target("arm A again", base_url=url, api_key="k-1")],
                                       config, workdir=tmp_path / "work")
        assert serving.is_alive(pid, port)  # not ours to stop
    finally:
        serving.stop(pid, port)
    known, bare = results["arm A"], results["arm A again"]
    assert known["server"]["forcing"]["method"] == "min_tokens"
    assert [r["completion_tokens"] for r in known["requests"]] == [12, 12]
    assert known["peak_memory_mb"] > Path(gguf).stat().st_size / 2**20
    assert known["server"]["llama_timings_unmatched"] == 0 and known["cells"][0]["prompt_cache_reuse"] is not None
    assert bare["peak_memory_mb"] is None and "process id" in bare["peak_memory_note"]
    assert all(r["llama"] is None for r in bare["requests"]) and bare["cells"][0]["prompt_cache_reuse"] is None
    assert bare["cells"][0]["tokens_per_second"]["median"] > 0


def test_configs_and_targets_are_checked_before_any_server_starts(tmp_path):
    with pytest.raises(ValueError, match="model_path"):
        speed.Target("nothing")
    with pytest.raises(ValueError, match="output_lengths"):
        speed.SpeedConfig(test_prompts=["x"], output_lengths=[0], batch_sizes=[1])
    with pytest.raises(ValueError, match="differ"):
        speed.run_speed_test([speed.Target("a", "m.gguf"), speed.Target("a", "n.gguf")],
                             speed.SpeedConfig(test_prompts=["x"], output_lengths=[4], batch_sizes=[1]),
                             workdir=tmp_path)
