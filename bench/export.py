"""GGUF export and llama.cpp speed on the demo model (SmolLM2-135M-Instruct), in one run:

  1. adapter-GGUF export time (PEFT folder -> llama.cpp adapter GGUF),
  2. merged-model export time: merge + f16 GGUF, then q8_0 and q4_k_m through llama.cpp's own
     quantizer, with each file's size against the f16 one,
     and the converter processes' peak memory against the f16 file's size (both conversions
     are llama.cpp's own `convert_lora_to_gguf.py` / `convert_hf_to_gguf.py`, run as subprocesses),
  3. llama.cpp generation tokens/s for the base GGUF, base + adapter GGUF, and the merged
     q4_k_m (and f16) GGUF, with the base as the baseline of the ratios.

    .venv/bin/python bench/export.py [--tokens 128 --reps 5 --rank 16]

The adapter is a LoRA on all linear layers (q,k,v,o,gate,up,down) with random non-zero weights,
so base + adapter does the full extra work a trained adapter does. Generation is greedy from one
chat prompt, max --tokens new tokens, n_threads = the machine's cores, every model loaded once
and warmed with one short generation, then --reps rounds of one run each (interleaved, so a slow
spell of a shared machine hits all alike); tokens/s = completion tokens / generation wall time,
the median per model. Nothing else should run on the machine meanwhile (the script prints the
load average before and after).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT = "Explain in a few paragraphs how a river shapes the valley it flows through."


def _demo_files() -> tuple[Path, Path]:
    from nexus.demo_model import DEMO_MODEL_NAME

    root = ROOT / "var" / "models" / DEMO_MODEL_NAME
    ggufs = sorted(root.glob("*.gguf"))
    if not (root / "hf" / "config.json").is_file() or not ggufs:
        sys.exit(f"The demo model is not provisioned under {root}: run scripts/setup.sh first")
    return root / "hf", ggufs[0]


def _random_adapter(hf_dir: Path, out: Path, rank: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.01)
    model.save_pretrained(str(out))


def _merge(hf_dir: Path, adapter_dir: Path, out: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(hf_dir)).save_pretrained(str(out))


def _timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def _speeds(rows: list[tuple[str, Path, Path | None]], tokens: int, reps: int) -> dict[str, tuple[float, int]]:
    """Median tokens/s per model. All are loaded first and the runs interleave (one of each per round),
    so a slow spell of the machine falls on every model alike instead of on whichever ran then."""
    from adapters_app.engine.llama import generate, load

    llms = {label: load(model, lora, n_ctx=1024) for label, model, lora in rows}
    runs: dict[str, list] = {label: [] for label in llms}
    try:
        for llm in llms.values():
            generate(llm, "Hi", max_tokens=8)  # warm-up
        for _ in range(reps):
            for label, llm in llms.items():
                llm.reset()
                runs[label].append(generate(llm, PROMPT, max_tokens=tokens))
    finally:
        for llm in llms.values():
            llm.close()
    return {label: (statistics.median(r.tokens_per_s for r in rs), rs[0].completion_tokens) for label, rs in runs.items()}


def _converter_peak() -> int:
    """Peak resident memory (bytes) of the largest child process so far: the converters run as
    subprocesses, so what an export holds is theirs."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    import json

    from adapters_app.engine import gguf as engine
    from adapters_app.engine.converters import source

    hf_dir, base_gguf = _demo_files()
    print(f"demo model: {hf_dir.parent.name}; base GGUF {base_gguf.name} ({base_gguf.stat().st_size / 1e6:.1f} MB); "
          f"{os.cpu_count()} cores; load average before {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="nexus-bench-export-") as tmp:
        tmp = Path(tmp)
        _random_adapter(hf_dir, tmp / "adapter", args.rank)
        config = json.loads((hf_dir / "config.json").read_text())

        print(f"converters: llama.cpp of llama-cpp-python {source()['llama_cpp_python']} (gguf-py {source()['gguf_py']})")
        t_adapter = _timed(engine.export_adapter, tmp / "adapter", hf_dir, tmp / "adapter.gguf")
        t_merge = _timed(_merge, hf_dir, tmp / "adapter", tmp / "merged")
        t_f16 = _timed(engine.export_model, tmp / "merged", tmp / "merged.f16.gguf", "f16", name="bench merged")
        peak = _converter_peak()
        t_q8 = _timed(engine.quantize, tmp / "merged.f16.gguf", tmp / "merged.q8_0.gguf", "q8_0")
        t_q4 = _timed(engine.quantize, tmp / "merged.f16.gguf", tmp / "merged.q4_k_m.gguf", "q4_k_m")
        size = {name: (tmp / f"merged.{name}.gguf").stat().st_size for name in ("f16", "q8_0", "q4_k_m")}

        print("\n== export times (seconds) ==")
        print(f"adapter GGUF (r={args.rank}, 7 modules x {config['num_hidden_layers']} layers): {t_adapter:6.2f}  "
              f"({(tmp / 'adapter.gguf').stat().st_size / 1e6:.1f} MB)")
        print(f"merge (PEFT merge_and_unload + save):          {t_merge:6.2f}")
        print(f"merged f16 GGUF write:                         {t_f16:6.2f}")
        print(f"quantize f16 -> q8_0 (llama.cpp):              {t_q8:6.2f}")
        print(f"quantize f16 -> q4_k_m (llama.cpp):            {t_q4:6.2f}")
        print(f"merged q4_k_m export in all (merge+f16+q4):    {t_merge + t_f16 + t_q4:6.2f}  "
              f"= {(t_merge + t_f16 + t_q4) / t_adapter:.1f}x the adapter GGUF export")
        print(f"peak resident memory of the converter processes (the f16 conversion is the largest): "
              f"{peak / 1e6:.0f} MB = {peak / size['f16']:.2f} of the f16 file's {size['f16'] / 1e6:.0f} MB "
              f"(torch and transformers included; the converter loads tensors lazily)")
        print("\n== sizes against f16 ==")
        for name, n in size.items():
            print(f"merged {name:7s} {n / 1e6:8.1f} MB  ratio {n / size['f16']:.3f}")

        print(f"\n== llama.cpp generation: greedy, {args.tokens} new tokens, median of {args.reps} interleaved rounds ==")
        rows = [("base GGUF (" + base_gguf.name.rsplit('.', 2)[-2] + ")", base_gguf, None),
                ("base GGUF + adapter GGUF", base_gguf, tmp / "adapter.gguf"),
                ("merged q4_k_m", tmp / "merged.q4_k_m.gguf", None),
                ("merged q8_0", tmp / "merged.q8_0.gguf", None),
                ("merged f16", tmp / "merged.f16.gguf", None)]
        speeds = _speeds(rows, args.tokens, args.reps)
        baseline = speeds[rows[0][0]][0]
        for label, (tps, n) in speeds.items():
            print(f"{label:28s} {tps:8.1f} tokens/s  ({n} tokens)  ratio to base {tps / baseline:.2f}")
    print(f"\nload average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
