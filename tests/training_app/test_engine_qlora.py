"""QLoRA on this CPU through bitsandbytes: 4-bit NF4 base weights, a LoRA adapter that learns."""
from __future__ import annotations

from training_app.engine.config import parse_job_config
from training_app.engine.trainer import NullHooks, train


class Hooks(NullHooks):
    @property
    def logs(self):
        return self.messages

    @property
    def steps(self):
        return self.metrics


def test_qlora_trains_a_4bit_model_and_says_which_compute_dtype_it_used(demo_model_files, tmp_path):
    records = [{"messages": [{"role": "user", "content": f"Code for item {i}?"},
                             {"role": "assistant", "content": "The code is ZEBRA-42."}]} for i in range(8)]
    config = parse_job_config({"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
                              {"max_steps": 4, "batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 2e-3,
                               "max_seq_length": 64, "warmup_ratio": 0.0, "lr_scheduler_type": "constant"},
                              {"enabled": True, "compute_dtype": "bfloat16"})
    hooks = Hooks()
    result = train(model_dir=demo_model_files[0], records=records, config=config, output_dir=tmp_path, hooks=hooks)
    assert result.status == "completed" and (result.adapter_dir / "adapter_model.safetensors").is_file()
    messages = [m for _, m in hooks.logs]
    assert any("4-bit nf4 with double quantization, float32 compute" in m for m in messages)
    assert ("qlora_config.compute_dtype: bfloat16 compute is not supported at speed on this CPU; QLoRA computes in "
            "float32 (the weights stay 4-bit NF4)") in hooks.warnings
    losses = [s["loss"] for s in hooks.steps]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_by_default_the_base_weights_are_4bit_nf4_and_only_lora_trains(demo_model_files):
    import bitsandbytes as bnb

    from training_app.engine.trainer import load_model_for_training

    config = parse_job_config({"rank": 8}, {"max_seq_length": 64})  # the design's default: QLoRA on, NF4
    model, _ = load_model_for_training(demo_model_files[0], config)
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 30 * 7  # every linear layer of the 30 blocks
    assert all(m.weight.quant_type == "nf4" for m in four_bit)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
