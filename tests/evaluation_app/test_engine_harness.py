"""The lm-eval harness engine on the demo model: generated tasks score like `lm_eval` itself, and the
backend self-check refuses a backend whose log-likelihoods are off by one token (a wrapper that
shifts them, and llama-cpp-python's real server through lm-eval's `gguf` model)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from evaluation_app.engine import harness
from evaluation_app.engine.suites import load_items, select_items, suite_get


@pytest.fixture(scope="module")
def hf_lm(demo_model_files):
    hf_dir, _ = demo_model_files
    return harness.load_hf(str(hf_dir), batch_size=4, device="cpu")


class ShiftedByOne:
    """A backend with llama.cpp's echo bug: the continuation's log-probability is taken one token
    early (the context's last token counted, the continuation's last token missing)."""

    def __init__(self, inner):
        self.inner = inner

    def loglikelihood(self, requests):
        from lm_eval.api.instance import Instance

        tok = self.inner.tokenizer
        shifted = []
        for i, req in enumerate(requests):
            context, continuation = req.args
            ids = tok(context + continuation, add_special_tokens=False)["input_ids"]
            n_ctx = len(tok(context, add_special_tokens=False)["input_ids"])
            new_context = tok.decode(ids[:n_ctx - 1])
            new_continuation = tok.decode(ids[n_ctx - 1:-1]) if len(ids) - n_ctx > 1 else tok.decode(ids[n_ctx - 1:n_ctx])
            shifted.append(Instance(request_type="loglikelihood", doc={}, arguments=(new_context, new_continuation),
                                    idx=i))
        return self.inner.loglikelihood(shifted)


def test_self_check_passes_for_the_hf_backend(hf_lm, demo_model_files):
    hf_dir, _ = demo_model_files
    check = harness.check_backend(hf_lm, model_dir=str(hf_dir))
    assert check.ok and len(check.rows) == len(harness.PROBES)
    assert all(row["difference"] < 0.05 for row in check.rows)


def test_self_check_refuses_a_backend_shifted_by_one_token(hf_lm, demo_model_files):
    hf_dir, _ = demo_model_files
    with pytest.raises(harness.BackendDisagrees, match="disagree"):
        harness.check_backend(ShiftedByOne(hf_lm), model_dir=str(hf_dir))


def test_self_check_refuses_llama_cpp_servers_echoed_logprobs(demo_model_files, tmp_path):
    """The bug the design notes name: lm-eval's `gguf` LM against llama-cpp-python's server."""
    from lm_eval.models.gguf import GGUFLM

    from deployments_app.engine import serving

    hf_dir, gguf = demo_model_files
    port = serving.free_port()
    spec = serving.ServerSpec(model_path=str(gguf), log_path=str(tmp_path / "server.log"), port=port, n_threads=2)
    pid = serving.spawn(spec)
    try:
        serving.wait_healthy(pid=pid, host="127.0.0.1", port=port, log_path=spec.log_path, timeout=120)
        backend = GGUFLM(base_url=f"http://127.0.0.1:{port}")
        with pytest.raises(harness.BackendDisagrees) as caught:
            harness.check_backend(backend, model_dir=str(hf_dir))
        assert "not reported" in str(caught.value)
    finally:
        serving.stop(pid, port)


def test_a_generated_mmlu_task_scores_item_for_item_like_lm_eval_itself(hf_lm, demo_model_files, tmp_path):
    hf_dir, _ = demo_model_files
    suite = suite_get("mmlu")
    from django.conf import settings
    from pathlib import Path

    everything = load_items(suite, Path(settings.NEXUS_DATA_DIR))
    items = select_items(everything, 8)
    spec = harness.mc_task(tmp_path / "tasks", "nexus_mmlu_t", items, [], style="letters")
    ours = harness.mc_item_results(harness.run_task(hf_lm, spec, num_fewshot=0), metric="acc")
    assert set(ours) == {i["id"] for i in items}
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
                    f"pretrained={hf_dir},dtype=float32", "--device", "cpu", "--include_path", str(spec.folder),
                    "--tasks", spec.name, "--num_fewshot", "0", "--batch_size", "4", "--log_samples",
                    "--output_path", str(out)], check=True, capture_output=True, timeout=600,
                   env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    sample_file = next(out.rglob(f"samples_{spec.name}_*.jsonl"))
    theirs = {json.loads(line)["doc"]["id"]: bool(json.loads(line)["acc"]) for line in sample_file.read_text().splitlines()}
    assert theirs == {k: v["correct"] for k, v in ours.items()}
    assert "dataset_path: json" in spec.yaml_text and spec.name in spec.yaml_text
