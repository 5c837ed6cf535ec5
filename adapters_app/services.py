from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from django.db import transaction
from django.db.models import Max

from adapters_app.models import LoRAAdapter
from nexus.errors import NexusError
from nexus.models import Team
from nexus.storage import name_slug, stage_down, storage_delete_prefix, storage_save_folder


# adapter_config.json's keys (PEFT's names) -> the design's LoRAConfig names (section 5.3)
_LORA_KEYS = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules",
              "bias": "bias", "use_rslora": "use_rslora", "use_dora": "use_dora"}


def adapter_slug(adapter: LoRAAdapter) -> str:
    return f"{name_slug(adapter.name)}-v{adapter.version}"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@transaction.atomic
def adapter_create_from_job(*, job, adapter_dir: Path, final_loss: float | None, name: str | None = None,
                            checkpoint_step: int | None = None, metrics: dict | None = None) -> LoRAAdapter:
    """Store a trained PEFT adapter folder and record it as the next version of its name (the job's by default)."""
    name = name or job.name
    # Versions are per (team, name): lock the team row so two jobs finishing together get distinct versions.
    Team.objects.select_for_update().get(pk=job.team_id)
    latest = LoRAAdapter.objects.filter(team=job.team, name=name).aggregate(v=Max("version"))["v"] or 0
    version = latest + 1
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        raise NexusError(f"{adapter_dir} is not a PEFT adapter folder (adapter_config.json and "
                         "adapter_model.safetensors are needed)", code="invalid_adapter")
    # The key holds a random part: ids and versions are reused after a delete, stored files must not be.
    token = hashlib.sha256(f"{job.pk}-{name}-{version}-{weights.stat().st_mtime_ns}".encode()).hexdigest()[:8]
    prefix = storage_save_folder(f"adapters/team-{job.team_id}/{name_slug(name)}-v{version}-{token}", adapter_dir)
    size = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    # what PEFT actually trained (the job's config leaves out defaults such as the target modules)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text() or "{}")
    lora_config = {**job.lora_config, **{ours: saved[peft] for peft, ours in _LORA_KEYS.items()
                                          if saved.get(peft) is not None}}
    if isinstance(lora_config.get("target_modules"), list):
        lora_config["target_modules"] = sorted(lora_config["target_modules"])
    adapter = LoRAAdapter(
        team=job.team,
        name=name,
        description=job.description,
        version=version,
        base_model=job.base_model,
        job=job,
        dataset_id=job.dataset_id,
        source=LoRAAdapter.Source.CHECKPOINT if checkpoint_step is not None else LoRAAdapter.Source.JOB,
        checkpoint_step=checkpoint_step,
        path=prefix,
        size_bytes=size,
        sha256=file_sha256(weights),
        lora_config=lora_config,
        training_config=job.training_config,
        metrics={k: v for k, v in (metrics or {}).items() if v is not None},
        final_loss=final_loss,
    )
    adapter.full_clean()
    adapter.save()
    return adapter


@contextmanager
def adapter_local_dir(adapter: LoRAAdapter) -> Iterator[Path]:
    """A local folder that PeftModel.from_pretrained can load (this host's cached copy on remote storage)."""
    yield stage_down(adapter.path)


@transaction.atomic
def adapter_delete(*, adapter: LoRAAdapter) -> None:
    """Delete an adapter, its exports and their files; refused while a deployment serves it."""
    from deployments_app.services import (  # noqa: PLC0415 - deployments import this module
        deployments_delete_ended,
        deployments_using,
    )

    adapter = LoRAAdapter.objects.select_for_update().get(pk=adapter.pk)
    using = deployments_using(adapter=adapter)
    if using:
        names = ", ".join(f"'{d.name}' (#{d.pk})" for d in using)
        raise NexusError(f"Adapter '{adapter}' is used by deployment {names}; stop that deployment first.",
                         code="in_use", status_code=409)
    if adapter.exports.filter(status__in=adapter.exports.model.ACTIVE).exists():
        raise NexusError(f"Adapter '{adapter}' has an export or merge in progress; wait for it to finish.",
                         code="in_use", status_code=409)
    prefixes = [adapter.path] + [e.path for e in adapter.exports.all() if e.path]
    deployments_delete_ended(adapter=adapter)
    adapter.delete()
    transaction.on_commit(lambda: [storage_delete_prefix(p) for p in prefixes])
