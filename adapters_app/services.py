from __future__ import annotations

from pathlib import Path

from django.db import transaction
from django.db.models import Max

from adapters_app.models import LoRAAdapter
from nexus.models import Team
from nexus.storage import local_path, storage_save_folder


@transaction.atomic
def adapter_create_from_job(*, job, adapter_dir: Path, final_loss: float | None, name: str | None = None) -> LoRAAdapter:
    """Store a trained PEFT adapter folder and record it as the next version of its name (the job's by default)."""
    name = name or job.name
    # Versions are per (team, name): lock the team row so two jobs finishing together get distinct versions.
    Team.objects.select_for_update().get(pk=job.team_id)
    latest = LoRAAdapter.objects.filter(team=job.team, name=name).aggregate(v=Max("version"))["v"] or 0
    version = latest + 1
    slug = "".join(c if c.isalnum() else "-" for c in name)[:60]
    prefix = storage_save_folder(f"adapters/team-{job.team_id}/job-{job.pk}-{slug}-v{version}", adapter_dir)
    size = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    adapter = LoRAAdapter(
        team=job.team,
        name=name,
        version=version,
        base_model=job.base_model,
        job=job if name == job.name else None,
        path=prefix,
        size_bytes=size,
        lora_config=job.lora_config,
        final_loss=final_loss,
    )
    adapter.full_clean()
    adapter.save()
    return adapter


def adapter_local_dir(adapter: LoRAAdapter):
    """Context manager yielding a local folder that PeftModel.from_pretrained can load."""
    return local_path(adapter.path)
