"""A run's checkpoints on disk: the ones the Trainer completed (`<output_dir>/trainer/checkpoint-N`,
each with its trainer_state.json), what their state says, and their adapter files. Django-free."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with trainer state), oldest first."""
    folder = Path(output_dir) / "trainer"
    found = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file() and p.name.split("-")[-1].isdecimal()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def _state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def checkpoint_losses(checkpoint: Path) -> tuple[float | None, float | None]:
    """The last training loss and the last validation loss logged up to this checkpoint."""
    history = _state(checkpoint).get("log_history", [])
    losses = [h["loss"] for h in history if "loss" in h]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    return losses[-1] if losses else None, evals[-1] if evals else None


def checkpoint_list(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete checkpoint, oldest first; `is_best` marks the one the latest state names best
    (the lowest validation loss)."""
    found = checkpoints(output_dir)
    best = _state(found[-1]).get("best_model_checkpoint") if found else None
    best = checkpoint_step(Path(best)) if best else None
    out = []
    for path in found:
        files = [p for p in path.iterdir() if p.is_file()]
        step = checkpoint_step(path)
        out.append({"step": step, "size_bytes": sum(p.stat().st_size for p in files),
                    "created_at": datetime.fromtimestamp(path.stat().st_mtime, tz=timezone.utc).isoformat(),
                    "has_optimizer_state": (path / "optimizer.pt").is_file(), "is_best": step == best})
    return out


def copy_adapter_files(checkpoint: Path, folder: Path) -> None:
    """The checkpoint's PEFT adapter (config and weights) into `folder`, loadable on its own."""
    for name in ADAPTER_FILES:
        (folder / name).write_bytes((checkpoint / name).read_bytes())
