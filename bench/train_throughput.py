"""Training throughput of the Nexus trainer vs a plain PyTorch LoRA loop, same model, data and
steps, in one process. Prints tokens/s for both and the ratio (ours / baseline).

    .venv/bin/python bench/train_throughput.py [--steps 20] [--batch 4] [--seq 128]

Needs the demo model (scripts/setup.sh provisions it into var/models/)."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training_app.engine.config import parse_job_config  # noqa: E402
from training_app.engine.data import PaddingCollator, encode_records  # noqa: E402
from training_app.engine.trainer import load_model_for_training, train  # noqa: E402


def records(n: int) -> list[dict]:
    import json

    rows = [json.loads(x) for x in (ROOT / "datasets_app/demo_data/pirate_alpaca.jsonl").read_text().splitlines()]
    return [{"messages": [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}
            for r in (rows * (n // len(rows) + 1))[:n]]


class Quiet:
    def __init__(self):
        self.metrics = []

    def log(self, message, level="info"):
        pass

    def on_start(self, **kw):
        pass

    def on_step(self, m):
        self.metrics.append(m)

    def should_stop(self):
        return False


def baseline(model_dir: Path, recs: list[dict], cfg, steps: int) -> tuple[float, int]:
    """A straightforward loop: same LoRA model, same batches, AdamW, no Trainer."""
    import torch

    torch.manual_seed(cfg.training.seed)
    model, tok = load_model_for_training(model_dir, cfg)
    examples, _ = encode_records(tok, recs, cfg.training.max_seq_length)
    collate = PaddingCollator(tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.training.learning_rate)
    model.train()
    bs = cfg.training.batch_size
    tokens = 0
    start = time.perf_counter()
    for step in range(steps):
        batch = collate([examples[(step * bs + i) % len(examples)] for i in range(bs)])
        tokens += int(batch["attention_mask"].sum())
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return tokens / (time.perf_counter() - start), tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--model-dir", default=str(ROOT / "var/models/SmolLM2-135M-Instruct/hf"))
    args = ap.parse_args()
    import torch

    cfg = parse_job_config({"r": 16, "lora_alpha": 32, "lora_dropout": 0.0},
                           {"max_steps": args.steps, "batch_size": args.batch, "gradient_accumulation_steps": 1,
                            "learning_rate": 1e-3, "max_seq_length": args.seq, "warmup_ratio": 0.0,
                            "lr_scheduler_type": "constant"})
    recs = records(args.batch * args.steps)
    print(f"device: {'cuda' if torch.cuda.is_available() else f'cpu ({torch.get_num_threads()} threads)'}; "
          f"{args.steps} steps x batch {args.batch}, max_seq_length {args.seq}")
    base_tps, base_tokens = baseline(Path(args.model_dir), recs, cfg, args.steps)
    print(f"baseline (plain PyTorch loop): {base_tps:8.1f} tokens/s over {base_tokens} tokens")
    hooks = Quiet()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(model_dir=args.model_dir, records=recs, config=cfg, output_dir=out, hooks=hooks)
        wall = time.perf_counter() - started
    ours_tps = result.tokens_seen / result.runtime_s
    print(f"nexus trainer (HF Trainer + hooks): {ours_tps:8.1f} tokens/s over {result.tokens_seen} tokens "
          f"(train loop {result.runtime_s:.1f}s, with model load and adapter save {wall:.1f}s)")
    print(f"loss {hooks.metrics[0]['loss']:.3f} -> {hooks.metrics[-1]['loss']:.3f}")
    print(f"ratio ours/baseline: {ours_tps / base_tps:.2f}")


if __name__ == "__main__":
    main()
