"""What the design's default (QLoRA on: 4-bit NF4 base, double quantization) costs in training
speed on this machine, against plain LoRA on the unquantized base, in one run:

    .venv/bin/python bench/qlora_default.py [--steps 6 --rounds 3 --seq 128]

Both train the demo model (SmolLM2-135M-Instruct) through the Nexus engine on the bundled pirate
data with the same config (rank 16 on the seven projections, batch 4, no accumulation, no
warmup, the design's adamw_8bit optimizer), the only difference being qlora_config.enabled.
Each round trains both, one after the other in alternating order (so a slow spell of a shared
machine hits both alike); tokens/s = tokens trained / the trainer's runtime (model load and
encoding excluded); the median per kind, and QLoRA's ratio to LoRA. Prints the warnings each
run gave (on a CPU: bf16 and the QLoRA compute dtype become float32). Nothing else should run on
the machine meanwhile (the script prints the load average before and after).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a datasets.py: keep it from shadowing the `datasets` package that transformers imports
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
MODEL_DIR = ROOT / "var/models/SmolLM2-135M-Instruct/hf"
DATA = ROOT / "datasets_app/demo_data/pirate_alpaca.jsonl"


def _records() -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in rows]


def _run(qlora: bool, steps: int, seq: int, records: list[dict]) -> tuple[float, list[str]]:
    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import NullHooks, train

    config = parse_job_config({"rank": 16, "alpha": 32},
                              {"max_steps": steps, "batch_size": 4, "gradient_accumulation_steps": 1,
                               "max_seq_length": seq, "warmup_steps": 0, "save_steps": steps},
                              {"enabled": qlora})
    hooks = NullHooks()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model_dir=MODEL_DIR, records=records, config=config, output_dir=tmp, hooks=hooks)
    return result.tokens_seen / result.runtime_s, hooks.warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").is_file():
        sys.exit(f"{MODEL_DIR} is missing: run scripts/setup.sh first")
    import torch

    records = _records()
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    speeds: dict[str, list[float]] = {"lora": [], "qlora": []}
    warnings: dict[str, list[str]] = {}
    for n in range(args.rounds):
        order = ("lora", "qlora") if n % 2 == 0 else ("qlora", "lora")
        for kind in order:
            tps, warned = _run(kind == "qlora", args.steps, args.seq, records)
            speeds[kind].append(tps)
            warnings[kind] = warned
            print(f"  round {n + 1} {kind:5s} {tps:6.1f} tokens/s")
    lora, qlora = statistics.median(speeds["lora"]), statistics.median(speeds["qlora"])
    print(f"\nSmolLM2-135M-Instruct, {args.steps} steps x batch 4, max_seq_length {args.seq}, median of {args.rounds}:")
    print(f"  LoRA  (unquantized base) {lora:6.1f} tokens/s  (1.00)")
    print(f"  QLoRA (4-bit NF4 base)   {qlora:6.1f} tokens/s  ({qlora / lora:.2f})")
    for kind, warned in warnings.items():
        for w in warned:
            print(f"  {kind} warning: {w}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nexus.settings.local")
    main()
