"""The engine trains each architecture appendix C names (Llama, Mistral, Qwen2, Phi-3, Gemma) and
the newer ones the installed transformers has, with appendix C's target modules in each model's
own module names, and the adapter it saves is what PEFT loads back."""
from __future__ import annotations

import pytest

from tests import tinymodels
from training_app.engine.config import parse_job_config
from training_app.engine.modelinfo import model_info
from training_app.engine.trainer import NullHooks, train

EXPECTED_TARGETS = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
}
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("arch", tinymodels.ARCHITECTURES)
def test_each_architecture_trains_with_appendix_c_targets(arch, demo_model_files, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    folder = tmp_path / arch
    tinymodels.make(arch, folder, demo_model_files[0])
    targets = model_info(str(folder)).default_targets()
    assert targets == EXPECTED_TARGETS.get(arch, SEVEN)
    records = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                             {"role": "assistant", "content": "The code is ZEBRA-42."}]} for i in range(8)]
    config = parse_job_config({"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets},
                              {"max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-2,
                               "max_seq_length": 64, "warmup_steps": 0, "lr_scheduler": "constant"},
                              {"enabled": False})
    hooks = NullHooks()
    result = train(model_dir=folder, records=records, config=config, output_dir=tmp_path / "out", hooks=hooks)
    assert result.status == "completed", hooks.messages
    losses = [m["loss"] for m in hooks.metrics]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    with safe_open(str(result.adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        trained = {key.split(".")[-3] for key in f.keys() if ".lora_A." in key}
    assert trained == set(targets)
    base = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    tokens = torch.tensor([list(range(10, 40))])
    with torch.no_grad():
        before = base(tokens).logits
        after = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()(tokens).logits
    assert (after - before).abs().max() > 1e-3  # the adapter PEFT loads back is the trained one
