"""Data-parallel training on 2 CPU processes (gloo) against 1 process: a CORRECTNESS CHECK, not a
speed claim. On this machine the "devices" are 2 CPU cores that both runs share, so 2 processes
cannot be faster than 1; on a GPU host each rank has a GPU of its own.

    .venv/bin/python bench/ddp.py [--steps 8 --examples 16 --seq 64]

Both runs train the demo model (SmolLM2-135M-Instruct) through the Nexus engine under torchrun
(`training_app.engine.distributed`, the entry the tests use) on the bundled pirate data with the
same global batch: 1 process with batch_size 2, and 2 processes with batch_size 1 (the seeded
sampler's order, each rank taking every other micro-batch, so every step holds the same two
examples). LoRA rank 8 on the seven projections, no dropout, adamw_torch, constant learning rate,
float32. It prints the loss of every step of both and their largest relative difference, whether
the two ranks end with identical LoRA weights and how far those are from the 1-process weights,
and tokens/s of each (tokens trained, counted over all ranks / the training loop's seconds; model
loading excluded, process start-up and rendezvous excluded).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a datasets.py: keep it from shadowing the `datasets` package that transformers imports
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
MODEL_DIR = ROOT / "var/models/SmolLM2-135M-Instruct/hf"
DATA = ROOT / "datasets_app/demo_data/pirate_alpaca.jsonl"


def _records(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()][:n]
    return [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in rows]


def _run(nproc: int, *, steps: int, seq: int, records: list[dict], folder: Path) -> dict:
    from training_app.engine import distributed
    from training_app.engine.config import parse_job_config

    config = parse_job_config({"rank": 8, "alpha": 16, "dropout": 0.0},
                              {"max_steps": steps, "batch_size": 2 // nproc, "num_gpus": nproc,
                               "gradient_accumulation_steps": 1, "max_seq_length": seq, "warmup_steps": 0,
                               "lr_scheduler": "constant", "learning_rate": 1e-3, "optimizer": "adamw_torch",
                               "bf16": False, "save_steps": steps},
                              {"enabled": False})
    started = time.monotonic()
    result = distributed.run("training_app.engine.distributed", nproc, model_dir=MODEL_DIR, output_dir=folder / f"out-{nproc}",
                             config=config, records=records, cwd=ROOT,
                             state_dict=str(folder / f"weights-{nproc}-{{rank}}.pt"))
    result["wall_s"] = time.monotonic() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").is_file():
        sys.exit(f"{MODEL_DIR} is missing: run scripts/setup.sh first")
    import torch

    records = _records(args.examples)
    print(f"load average before: {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPU cores")
    with tempfile.TemporaryDirectory(prefix="nexus-bench-ddp-") as tmp:
        folder = Path(tmp)
        one = _run(1, steps=args.steps, seq=args.seq, records=records, folder=folder)
        two = _run(2, steps=args.steps, seq=args.seq, records=records, folder=folder)
        w1 = torch.load(folder / "weights-1-0.pt")
        r0, r1 = torch.load(folder / "weights-2-0.pt"), torch.load(folder / "weights-2-1.pt")
    identical = r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    drift = max(float((w1[k] - r0[k]).abs().max()) for k in w1)
    scale = max(float(w1[k].abs().max()) for k in w1)

    print(f"\nSmolLM2-135M-Instruct on the CPU (gloo), {args.steps} steps, global batch 2 (1 x batch 2 | 2 x batch 1), "
          f"max_seq_length {args.seq}, {len(records)} examples. A correctness check, not a speed claim.")
    print("  step   loss, 1 process   loss, 2 processes   relative difference")
    worst = 0.0
    for a, b in zip(one["metrics"], two["metrics"]):
        diff = abs(a["loss"] - b["loss"]) / abs(a["loss"])
        worst = max(worst, diff)
        print(f"  {a['step']:4d}   {a['loss']:15.6f}   {b['loss']:17.6f}   {diff:.2e}")
    print(f"  largest relative loss difference: {worst:.2e}")
    print(f"  the two ranks' LoRA weights identical: {identical}; largest difference from the 1-process weights "
          f"{drift:.2e} (largest weight {scale:.2e})")
    print(f"  tokens trained: {one['tokens_seen']} (1 process), {two['tokens_seen']} (2 processes, both ranks)")
    for name, run in (("1 process  ", one), ("2 processes", two)):
        print(f"  {name} {run['tokens_seen'] / run['runtime_s']:7.1f} tokens/s  ({run['runtime_s']:.1f} s in the "
              f"training loop, {run['wall_s']:.1f} s from launch to result)")
    print(f"  2 processes / 1 process: {(two['tokens_seen'] / two['runtime_s']) / (one['tokens_seen'] / one['runtime_s']):.2f} "
          "(both share the same CPU cores here: not a speed-up measurement)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
