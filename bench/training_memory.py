"""Peak memory of a few training steps through the engine, each case in a fresh process:

    .venv/bin/python bench/training_memory.py [--seq 512 --steps 2] [--malloc]

The job is the memory e2e test's (tests/e2e/test_validation_and_memory_e2e.py): the demo model,
8 tales of 700 words (every sequence filled to max_seq_length), rank 16, batch 4, no accumulation.
Cases: LoRA and QLoRA, each with the loss at supervised positions in chunks (engine/loss.py, the
default) and with full logits for every position (the path before it), and each with the engine's
lean modules and one-row varlen batches (engine/lean.py, the default) and with PEFT's and
transformers' own modules and rows of the longest example ("plain modules"). The peak is the engine's
(VmHWM since the run started, model load included); beside it the estimate for the same config
(engine/estimate.py). --malloc adds the chunked cases with glibc's mmap threshold fixed at 128 KiB
(MALLOC_MMAP_THRESHOLD_=131072): what heap fragmentation adds to the resident peak on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a datasets.py: keep it from shadowing the `datasets` package that transformers imports
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
MODEL_DIR = ROOT / "var/models/SmolLM2-135M-Instruct/hf"
WORDS = "the sea is wide and the wind is strong so hoist the sails and mind the rum my hearties".split()
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def probe(kind: str, loss: str, modules: str, seq: int, steps: int) -> None:
    """In this process: train `steps` steps, print one JSON line."""
    from nexus.modelfiles import parameter_count
    from training_app.engine import trainer
    from training_app.engine.config import parse_job_config
    from training_app.engine.estimate import estimate_memory
    from training_app.engine.modelinfo import model_info

    if loss == "full-logits":
        trainer.plain_loss_reason = lambda model: "full logits asked by bench/training_memory.py"
    if modules == "plain":
        trainer.make_lean = lambda model: None
        trainer.varlen_reason = lambda model_dir, config: "plain modules asked by bench/training_memory.py"
    records = [{"messages": [{"role": "user", "content": f"Tell tale number {i}."},
                             {"role": "assistant", "content": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(700))}]}
               for i in range(8)]
    config = parse_job_config({"rank": 16, "alpha": 32}, {"max_steps": steps, "batch_size": 4, "gradient_accumulation_steps": 1,
                                                          "max_seq_length": seq}, {"enabled": kind == "qlora"})
    hooks = trainer.NullHooks()
    with tempfile.TemporaryDirectory(prefix="nexus-bench-memory-") as tmp:
        result = trainer.train(model_dir=MODEL_DIR, records=records, config=config, output_dir=tmp, hooks=hooks)
    estimate = estimate_memory(model_info(str(MODEL_DIR)), parameter_count(str(MODEL_DIR)), config, device="cpu")
    print("PROBE " + json.dumps({"peak": result.peak_memory_bytes, "estimate": estimate["total_bytes"],
                                 "first_loss": hooks.metrics[0]["loss"], "runtime_s": result.runtime_s}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--malloc", action="store_true", help="also the chunked cases with a fixed mmap threshold")
    parser.add_argument("--probe", nargs=3, metavar=("KIND", "LOSS", "MODULES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe, args.seq, args.steps)
        return
    if not (MODEL_DIR / "config.json").is_file():
        sys.exit(f"{MODEL_DIR} is missing: run scripts/setup.sh first")
    cases = [(kind, loss, modules, {}) for kind in ("lora", "qlora") for loss, modules in
             (("full-logits", "plain"), ("chunked", "plain"), ("chunked", "lean"))]
    if args.malloc:
        cases += [(kind, "chunked", modules, FIXED_MALLOC) for kind in ("lora", "qlora") for modules in ("plain", "lean")]
    print(f"SmolLM2-135M-Instruct, {args.steps} steps x batch 4 x max_seq_length {args.seq}, rank 16; "
          f"peak resident memory per case (fresh process each)")
    for kind, loss, modules, env in cases:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", kind, loss, modules, "--seq", str(args.seq),
               "--steps", str(args.steps)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
        lines = [line for line in out.stdout.splitlines() if line.startswith("PROBE ")]
        if out.returncode or not lines:
            sys.exit(f"{kind} {loss} {modules} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        found = json.loads(lines[-1][6:])
        label = loss + (", plain modules" if modules == "plain" else ", lean") + (" (mmap threshold 128 KiB)" if env else "")
        print(f"  {kind:<5} {label:<52} peak {found['peak'] / 2**20:7,.0f} MiB   estimate "
              f"{found['estimate'] / 2**20:7,.0f} MiB ({100 * (found['estimate'] / found['peak'] - 1):+.0f}%)   "
              f"first loss {found['first_loss']:.5f}   {found['runtime_s']:.0f} s")


if __name__ == "__main__":
    main()
