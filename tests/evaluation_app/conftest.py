from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_adapter_gguf(demo_model_files, tmp_path_factory) -> Path:
    """A LoRA adapter GGUF for the demo model with random non-zero B matrices (PEFT, then our
    then llama.cpp's converter), so base + adapter computes something visibly different from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters_app.engine.gguf import export_adapter

    hf_dir, _ = demo_model_files
    folder = tmp_path_factory.mktemp("random-adapter")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                     "o_proj", "up_proj"],
                                                  init_lora_weights=False))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    peft_model.save_pretrained(str(folder / "adapter"))
    return export_adapter(folder / "adapter", Path(hf_dir), folder / "adapter.gguf")


# -- comparison sessions (tests/evaluation_app/test_sessions.py and friends) ------------------------


@pytest.fixture
def eval_adapter(user, base_model, random_adapter_gguf):
    """An adapter of the demo model whose GGUF is the random adapter above."""
    from tests.factories import make_adapter, make_job

    adapter = make_adapter(make_job(user, base_model))
    adapter.gguf_path = str(random_adapter_gguf)
    adapter.save(update_fields=["gguf_path"])
    return adapter


def run_session(session_id: int) -> None:
    """What a worker does with a queued session: claim it, then run it to the end."""
    from evaluation_app.jobs import COMPARISON
    from evaluation_app.runner import comparison_run
    from nexus.jobs import claim

    assert claim(COMPARISON, session_id, worker="test@host")
    comparison_run(session_id=session_id)


def run_judge(run_id: int) -> None:
    from evaluation_app.jobs import JUDGE
    from evaluation_app.runner import judge_run
    from nexus.jobs import claim

    assert claim(JUDGE, run_id, worker="test@host")
    try:
        judge_run(run_id=run_id)
    except Exception as exc:  # noqa: BLE001 - what the kit does with a failure: record it on the row
        from evaluation_app.services import run_fail

        run_fail(JUDGE, run_id, str(getattr(exc, "message", exc)))
