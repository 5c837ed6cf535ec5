"""The built-in presets: appendix A's three, with exactly its values, kept in code with slug ids;
team presets are rows. A preset sets these fields; everything else keeps the design's defaults."""
from __future__ import annotations

from typing import Any

BUILTIN_PRESETS = [
    {
        "id": "quick-start",
        "name": "Quick Start",
        "description": "Fast training (appendix A.1): rank 8 on q_proj and v_proj, one epoch.",
        "lora_config": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
        "training_config": {"learning_rate": 3e-4, "batch_size": 8, "num_epochs": 1, "warmup_steps": 50},
        "qlora_config": {},
    },
    {
        "id": "balanced",
        "name": "Balanced",
        "description": "The recommended default (appendix A.2): rank 32 on the attention projections, three epochs.",
        "lora_config": {"rank": 32, "alpha": 64, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "training_config": {"learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation_steps": 4, "num_epochs": 3,
                            "warmup_steps": 100},
        "qlora_config": {},
    },
    {
        "id": "high-quality",
        "name": "High Quality",
        "description": "Best results (appendix A.3): rank 128 on all seven projections, five epochs.",
        "lora_config": {"rank": 128, "alpha": 256, "dropout": 0.1,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        "training_config": {"learning_rate": 1e-4, "batch_size": 2, "gradient_accumulation_steps": 8, "num_epochs": 5,
                            "warmup_steps": 200, "weight_decay": 0.01},
        "qlora_config": {},
    },
]


def preset_out(preset: dict[str, Any], *, builtin: bool, team: int | None) -> dict[str, Any]:
    """A preset as the API shows it: its config sections under the job's names and appendix A's
    (`lora`, `training`)."""
    return {**preset, "builtin": builtin, "team": team, "lora": preset["lora_config"],
            "training": preset["training_config"]}


BUILTIN_BY_ID = {p["id"]: p for p in BUILTIN_PRESETS}
