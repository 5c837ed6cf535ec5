"""The built-in presets (appendix A), kept in code with slug ids; team presets are rows.
A preset sets these fields; everything else keeps the defaults."""
from __future__ import annotations

BUILTIN_PRESETS = [
    {
        "id": "quick-start",
        "name": "Quick Start",
        "description": "A first run in minutes: small rank, one epoch, short sequences.",
        "lora_config": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05},
        "training_config": {"num_epochs": 1, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 2e-4,
                            "max_seq_length": 1024, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine"},
        "qlora_config": {"enabled": False},
    },
    {
        "id": "balanced",
        "name": "Balanced",
        "description": "The usual choice: rank 16 on the attention projections, three epochs.",
        "lora_config": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
        "training_config": {"num_epochs": 3, "batch_size": 4, "gradient_accumulation_steps": 4, "learning_rate": 2e-4,
                            "max_seq_length": 2048, "warmup_ratio": 0.03, "lr_scheduler_type": "cosine"},
        "qlora_config": {"enabled": False},
    },
    {
        "id": "high-quality",
        "name": "High Quality",
        "description": "Rank 64 on every linear layer, more epochs, gradient checkpointing for long sequences.",
        "lora_config": {"r": 64, "lora_alpha": 128, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "training_config": {"num_epochs": 5, "batch_size": 4, "gradient_accumulation_steps": 8, "learning_rate": 1e-4,
                            "max_seq_length": 4096, "warmup_ratio": 0.05, "lr_scheduler_type": "cosine",
                            "gradient_checkpointing": True},
        "qlora_config": {"enabled": False},
    },
]

BUILTIN_BY_ID = {p["id"]: p for p in BUILTIN_PRESETS}
