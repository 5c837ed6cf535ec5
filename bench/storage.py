"""Artifacts through the object store, against a plain boto3 loop, and training with remote storage
against local storage, in the same run.

1. Staging: the demo model's HF folder (about 270 MB, one large safetensors file and small tokenizer
   files) and a LoRA checkpoint folder (adapter, optimizer and scheduler state, trainer state) up and
   down through `nexus.storage.stage_up` / `stage_down` against a real S3 server (SeaweedFS, `weed
   mini`, started here), and the same folders through the loop `aws s3 sync` amounts to: list, then
   boto3's `upload_file` / `download_file` one file after another with boto3's default transfer
   settings. Each direction is timed `--repeats` times per method, alternating, best time kept;
   every staged-down folder is compared byte for byte. Target: >= 1x the plain loop's throughput.
2. Training: the same small job (`--steps` steps on the demo model, a checkpoint every 2 steps) in
   two fresh processes, one with local storage and one with the object store as a worker with
   NEXUS_STORAGE_URL runs it: the base model staged into the cache first (timed apart), then every
   checkpoint uploaded the moment it is saved. Target: remote supervised tokens/s >= 0.95x local.

Usage: .venv/bin/python bench/storage.py [--repeats 3] [--steps 8]
Results are appended to bench/RESULTS-storage.txt."""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
RESULTS = ROOT / "bench" / "RESULTS-storage.txt"


def _setup_django(storage_url: str, cache: Path, data: Path) -> None:
    os.environ.update({"DJANGO_SETTINGS_MODULE": "nexus.settings.local", "NEXUS_STORAGE_URL": storage_url,
                       "NEXUS_CACHE_DIR": str(cache), "NEXUS_DATA_DIR": str(data)})
    import django

    django.setup()


def _plain_up(client, bucket: str, folder: Path, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def _plain_down(client, bucket: str, prefix: str, into: Path) -> None:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
    for key in [item["Key"] for page in pages for item in page.get("Contents", [])]:
        target = into / key[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))


def _same(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and not p.name.startswith(".nexus"))
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


def _checkpoint(folder: Path) -> Path:
    """A checkpoint of the demo model's shape: rank-16 adapter on all linear layers, AdamW state."""
    folder.mkdir(parents=True)
    sizes = {"adapter_model.safetensors": 19_500_000, "optimizer.pt": 39_100_000, "scheduler.pt": 1_500,
             "rng_state.pth": 14_600, "training_args.bin": 5_800, "trainer_state.json": 2_100,
             "adapter_config.json": 900, "README.md": 5_100}
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    return folder


def staging(args, s3, tmp: Path, say) -> None:
    from django.conf import settings

    from nexus.storage import stage_down, stage_up

    client, bucket = s3.client(), "nexus"
    location = settings.NEXUS_STORAGE_OPTIONS["location"]

    model = Path(os.environ["NEXUS_MODELS_DIR"]) / "SmolLM2-135M-Instruct" / "hf"
    folders = {"model folder": model, "checkpoint": _checkpoint(tmp / "checkpoint-8")}
    for label, folder in folders.items():
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        best = {}
        for i in range(args.repeats):
            for method in ("plain", "nexus"):
                prefix = f"bench/{label.replace(' ', '-')}/{method}-{i}"
                down = tmp / f"down-{method}-{i}"
                started = time.perf_counter()
                if method == "plain":
                    _plain_up(client, bucket, folder, f"{location}/{prefix}")
                else:
                    stage_up(folder, prefix)
                up = time.perf_counter() - started
                started = time.perf_counter()
                if method == "plain":
                    _plain_down(client, bucket, f"{location}/{prefix}", down)
                else:
                    down = stage_down(prefix)
                got = time.perf_counter() - started
                assert _same(folder, down), f"{method} staged down a different {label}"
                best[(method, "up")] = min(best.get((method, "up"), 1e9), up)
                best[(method, "down")] = min(best.get((method, "down"), 1e9), got)
                shutil.rmtree(down, ignore_errors=True)
        for direction in ("up", "down"):
            plain, ours = size / best[("plain", direction)] / 1e6, size / best[("nexus", direction)] / 1e6
            say(f"{label} ({size / 1e6:.1f} MB) {direction:>4}: plain boto3 loop {plain:7.1f} MB/s, "
                f"nexus {ours:7.1f} MB/s, ratio {ours / plain:.2f}x (target >= 1x)")


def train_child(storage_url: str, workdir: Path, steps: int) -> dict:
    """One training run as a worker does it (in a fresh process): stage the model, train, upload checkpoints."""
    _setup_django(storage_url, workdir / "cache", workdir / "data")
    from datasets_app.engine.formats import record_to_messages
    from nexus.storage import is_remote, model_folder, stage_up
    from tests.factories import pirate_records
    from training_app.artifacts import checkpoint_summary
    from training_app.engine.config import parse_job_config
    from training_app.engine.trainer import NullHooks, train

    model = Path(os.environ["NEXUS_MODELS_DIR"]) / "SmolLM2-135M-Instruct" / "hf"
    staged_s = 0.0
    if is_remote():
        stage_up(model, "models/bench/hf")
        started = time.perf_counter()
        model = model_folder("models/bench/hf")
        staged_s = time.perf_counter() - started
    out = workdir / "job"
    uploads: list[float] = []

    class Hooks(NullHooks):
        def on_checkpoint(self, step: int, *, reason: str) -> None:
            if is_remote():
                started = time.perf_counter()
                folder = out / "trainer" / f"checkpoint-{step}"
                stage_up(folder, f"jobs/bench/checkpoints/checkpoint-{step}", summary=checkpoint_summary(folder))
                uploads.append(time.perf_counter() - started)

    config = parse_job_config({"rank": 8, "alpha": 16}, {"batch_size": 4, "max_seq_length": 128, "max_steps": steps,
                                                         "save_steps": 2, "warmup_steps": 0, "learning_rate": 1e-4})
    started = time.perf_counter()
    records = [{"messages": record_to_messages(r, "alpaca")} for r in pirate_records(32)]
    result = train(model_dir=str(model), records=records, config=config, output_dir=out, hooks=Hooks())
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "supervised": result.supervised_tokens, "staged_s": staged_s, "uploads": uploads,
            "tokens_per_s": result.supervised_tokens / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--skip-training", action="store_true", help="staging only (development)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--storage-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("NEXUS_MODELS_DIR", str(ROOT / "var" / "models"))
    if args.child == "train":
        print(json.dumps(train_child(args.storage_url, Path(args.workdir), args.steps)))
        return
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    from tests.scale.conftest import start_s3_server

    s3 = start_s3_server()
    try:
        with tempfile.TemporaryDirectory(prefix="nexus-bench-storage-") as tmp:
            tmp = Path(tmp)
            url = f"{s3.url}/bench-{int(time.time())}"
            say(f"# bench/storage.py {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} CPUs; SeaweedFS "
                f"weed mini on 127.0.0.1 (same machine: the network is loopback)")
            _setup_django(url, tmp / "cache", tmp / "data")
            staging(args, s3, tmp, say)
            if args.skip_training:
                return
            runs = {}
            for label, storage_url in (("local", ""), ("remote", url), ("local again", ""), ("remote again", url)):
                out = subprocess.run([sys.executable, __file__, "--child", "train", "--storage-url", storage_url,
                                      "--workdir", str(tmp / label.replace(" ", "-")), "--steps", str(args.steps)],
                                     capture_output=True, text=True, cwd=ROOT)
                if out.returncode:
                    raise RuntimeError(f"the {label} training run failed:\n{out.stderr[-3000:]}")
                runs[label] = json.loads(out.stdout.strip().splitlines()[-1])
                r = runs[label]
                extra = (f"; model staged in {r['staged_s']:.1f} s before training, {len(r['uploads'])} checkpoint "
                         f"uploads took {sum(r['uploads']):.2f} s in all") if r["uploads"] else ""
                say(f"training, {label} storage: {r['supervised']} supervised tokens in {r['seconds']:.1f} s = "
                    f"{r['tokens_per_s']:.1f} tokens/s{extra}")
            local = max(runs["local"]["tokens_per_s"], runs["local again"]["tokens_per_s"])
            remote = max(runs["remote"]["tokens_per_s"], runs["remote again"]["tokens_per_s"])
            say(f"training throughput remote / local (best of two each): {remote / local:.3f} (target >= 0.95)")
    finally:
        s3.stop()
    with RESULTS.open("a") as fh:
        fh.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
