"""Merges and GGUF exports of adapters: create (checks first), run on a `cpu` worker with
progress events, verify in llama.cpp before the result is offered, reap after a worker died."""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from adapters_app.engine import gguf as gguf_engine
from adapters_app.engine.converters import ConverterMissing
from adapters_app.engine.merge import merge_adapter
from adapters_app.jobs import EXPORT
from adapters_app.models import AdapterExport, LoRAAdapter
from adapters_app.services import adapter_local_dir, adapter_slug, file_sha256
from nexus.errors import NexusError
from nexus.quotas import quota_check
from nexus.redact import public_error
from nexus.models import BaseModel, JobEvent
from nexus.jobs import enqueue, event, is_transient, status_event
from nexus.storage import cache_path, stage_file, storage_save_file, storage_save_folder
from nexus.catalog import hf_meta, hf_weights

Kind = AdapterExport.Kind
Status = AdapterExport.Status
VERIFY_PROMPT = "What is the capital of France?"


def _check_exportable(adapter: LoRAAdapter, kind: str) -> None:
    """Everything that can be known before work starts: architecture, adapter kind, files."""
    base = adapter.base_model
    if not base.hf_path or not Path(hf_meta(base), "config.json").is_file():
        raise NexusError(f"Base model '{base.name}' has no local HF folder to merge into or export from.",
                         code="unsupported", status_code=400)
    if kind != Kind.MERGE:  # merging works for any architecture transformers and PEFT load
        try:
            gguf_engine.check_model_exportable(Path(hf_meta(base)))
        except gguf_engine.UnsupportedModel as exc:
            raise NexusError(f"{exc}.", code="unsupported") from exc
        except ConverterMissing as exc:
            raise NexusError(str(exc), code="unavailable", status_code=503) from exc
    from django.core.files.storage import default_storage

    missing = [name for name in ("adapter_config.json", "adapter_model.safetensors")
               if not default_storage.exists(f"{adapter.path}/{name}")]
    if missing:
        raise NexusError(f"Adapter '{adapter}' has lost its files ({', '.join(missing)}).", code="missing")
    if kind == Kind.ADAPTER_GGUF:
        with adapter_local_dir(adapter) as folder:
            try:
                gguf_engine.check_adapter_exportable(json.loads((Path(folder) / "adapter_config.json").read_text()),
                                                     gguf_engine.adapter_tensor_names(Path(folder)))
            except gguf_engine.UnsupportedModel as exc:
                raise NexusError(f"{exc}.", code="unsupported") from exc
            except FileNotFoundError as exc:
                raise NexusError(f"Adapter '{adapter}' has lost its files ({exc.filename}).", code="missing") from exc


def export_create(*, adapter: LoRAAdapter, user, kind: str, quantization: str = "") -> AdapterExport:
    """Queue a merge or GGUF export; an identical one already queued or running is returned instead."""
    if kind not in Kind.values:
        raise NexusError(f"kind must be one of {', '.join(Kind.values)}", code="validation_error",
                         details={"kind": f"unknown kind {kind!r}"})
    if kind == Kind.MODEL_GGUF:
        quantization = quantization or "q4_k_m"
        if quantization not in gguf_engine.QUANTIZATIONS:
            raise NexusError(f"quantization must be one of {', '.join(gguf_engine.QUANTIZATIONS)}",
                             code="validation_error", details={"quantization": f"unknown {quantization!r}"})
    elif kind == Kind.ADAPTER_GGUF:
        quantization = "f32"
    else:
        quantization = ""
        if adapter.merged_model_id:
            raise NexusError(f"Adapter '{adapter}' is already merged into '{adapter.merged_model.name}'.",
                             code="already_merged", status_code=409)
    _check_exportable(adapter, kind)
    with transaction.atomic():
        LoRAAdapter.objects.select_for_update().get(pk=adapter.pk)
        running = adapter.exports.filter(kind=kind, quantization=quantization, status__in=AdapterExport.ACTIVE).first()
        if running:
            return running
        quota_check(team=adapter.team, kind="active_exports")
        export = AdapterExport(team=adapter.team, adapter=adapter, kind=kind, quantization=quantization)
        export.full_clean()
        export.save()
        what = export.get_kind_display() + (f" ({quantization})" if kind == Kind.MODEL_GGUF else "")
        status_event(EXPORT, export.pk, Status.QUEUED, f"{what} of '{adapter}' queued by {getattr(user, 'username', 'system')}")
        enqueue(EXPORT, export.pk)
    return export


class _Progress:
    """Progress of one export: the row's bar and stage, an event per stage."""

    def __init__(self, export: AdapterExport, start: float = 0.0, end: float = 1.0):
        self.export, self.start, self.end = export, start, end

    def __call__(self, fraction: float, stage: str) -> None:
        value = round(self.start + (self.end - self.start) * max(0.0, min(1.0, fraction)), 4)
        AdapterExport.objects.filter(pk=self.export.pk).update(progress=value, stage=stage[:200],
                                                               heartbeat_at=timezone.now())
        event(EXPORT, self.export.pk, stage, type=JobEvent.Type.METRIC, data={"progress": value, "stage": stage})


def export_run(*, export_id: int) -> AdapterExport:
    """Do a claimed (running) export to the end: work, verification, the stored file, or a failure."""
    export = AdapterExport.objects.select_related("adapter", "adapter__base_model", "team").get(pk=export_id)
    if export.status != Status.RUNNING:
        return export
    started = time.perf_counter()
    work_root = cache_path("work", "exports")
    work_root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=work_root, prefix=f"export-{export.pk}-") as tmp:
            runner = {Kind.MERGE: _run_merge, Kind.ADAPTER_GGUF: _run_adapter_gguf, Kind.MODEL_GGUF: _run_model_gguf}
            runner[export.kind](export, Path(tmp))
    except Exception as exc:  # noqa: BLE001 - every failure is recorded: a sentence here, the traceback in the log
        if is_transient(exc):
            raise  # the job kit tries again with backoff
        return export_fail(export_id=export.pk, error=public_error(exc, what="The export"))
    export.refresh_from_db()
    event(EXPORT, export.pk, f"Finished in {time.perf_counter() - started:.1f}s")
    return export


def export_fail(*, export_id: int, error: str) -> AdapterExport:
    AdapterExport.objects.filter(pk=export_id, status__in=AdapterExport.ACTIVE).update(
        status=Status.FAILED, error=error[:4000], finished_at=timezone.now())
    status_event(EXPORT, export_id, Status.FAILED, f"Failed: {error}", level="error")
    return AdapterExport.objects.get(pk=export_id)


def _storage_prefix(export: AdapterExport) -> str:
    return f"exports/team-{export.team_id}/adapter-{export.adapter_id}/export-{export.pk}"


def _complete(export: AdapterExport, *, path: str, size: int, sha256: str, verification: dict) -> None:
    with transaction.atomic():
        AdapterExport.objects.filter(pk=export.pk).update(
            status=Status.COMPLETED, progress=1.0, stage="done", path=path, size_bytes=size, sha256=sha256,
            verified=True, verification=verification, finished_at=timezone.now())
        status_event(EXPORT, export.pk, Status.COMPLETED, f"Completed: {Path(path).name}, {size / 1e6:.1f} MB, verified")


def _merged_folder(adapter: LoRAAdapter, out: Path, progress: _Progress) -> dict:
    with adapter_local_dir(adapter) as folder:
        return merge_adapter(hf_weights(adapter.base_model), folder, out, progress)


def _run_merge(export: AdapterExport, tmp: Path) -> None:
    adapter = export.adapter
    progress = _Progress(export)
    folder = tmp / "merged"
    check = _merged_folder(adapter, folder, progress)
    prefix = storage_save_folder(f"{_storage_prefix(export)}/merged", folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    weights = sorted(folder.glob("*.safetensors"))
    model = _register_merged(adapter, folder, prefix)
    with transaction.atomic():
        LoRAAdapter.objects.filter(pk=adapter.pk).update(is_merged=True, merged_model=model)
        _complete(export, path=prefix, size=size, sha256=file_sha256(weights[0]) if weights else "",
                  verification={**check, "model": model.name})
    event(EXPORT, export.pk, f"Registered '{model.name}' in the model catalog: it can be trained, exported and deployed")


def _register_merged(adapter: LoRAAdapter, folder: Path, prefix: str) -> BaseModel:
    from nexus.catalog import base_model_register

    name = f"{adapter.team.slug}/{adapter.name}-v{adapter.version}-merged"
    return base_model_register(name=name, hf_path=folder, stored_as=prefix, team=adapter.team,
                               source=f"merge of adapter #{adapter.pk} ({adapter})")


def _base_gguf(adapter: LoRAAdapter) -> Path | None:
    path = adapter.base_model.gguf_path
    if not path or (Path(path).is_absolute() and not Path(path).is_file()):
        return None
    return stage_file(path)


def _verify(export: AdapterExport, progress: _Progress, model_path: Path, lora_path: Path | None = None) -> dict:
    """Load the export in llama.cpp and run a short greedy generation; no output, no offer."""
    from adapters_app.engine.llama import load_and_generate

    AdapterExport.objects.filter(pk=export.pk).update(status=Status.VERIFYING)
    status_event(EXPORT, export.pk, Status.VERIFYING, "Verifying in llama.cpp: load and a short greedy generation")
    gen = load_and_generate(model_path, VERIFY_PROMPT, lora_path=lora_path, max_tokens=24)
    if gen.completion_tokens == 0 or not gen.text.strip():
        raise RuntimeError(f"llama.cpp loaded the export but generated nothing for {VERIFY_PROMPT!r}")
    progress(0.98, f"llama.cpp answered {gen.text.strip()[:80]!r} at {gen.tokens_per_s:.1f} tokens/s")
    result = {"prompt": VERIFY_PROMPT, **gen.as_dict(), "passed": True,
              "metadata": gguf_engine.read_metadata(lora_path or model_path)}
    return result


def _run_adapter_gguf(export: AdapterExport, tmp: Path) -> None:
    adapter = export.adapter
    progress = _Progress(export)
    base = _base_gguf(adapter)
    out = tmp / f"{adapter_slug(adapter)}.lora.gguf"
    with adapter_local_dir(adapter) as folder:
        gguf_engine.export_adapter(Path(folder), Path(hf_meta(adapter.base_model)), out,
                                   progress=_Progress(export, 0.05, 0.4))
    progress(0.4, f"llama.cpp's converter wrote the adapter GGUF ({out.stat().st_size / 1e6:.1f} MB)")
    if base is None:
        base = tmp / "base.f16.gguf"
        gguf_engine.export_model(Path(hf_weights(adapter.base_model)), base, "f16", name=adapter.base_model.name,
                                 progress=_Progress(export, 0.4, 0.8))
        progress(0.8, "The base model has no GGUF: converted an f16 one to verify against")
    verification = _verify(export, progress, base, out)
    verification["base_gguf"] = Path(adapter.base_model.gguf_path).name if adapter.base_model.gguf_path else "f16"
    path = storage_save_file(f"{_storage_prefix(export)}/{out.name}", out)
    with transaction.atomic():
        _complete(export, path=path, size=out.stat().st_size, sha256=file_sha256(out), verification=verification)
        LoRAAdapter.objects.filter(pk=adapter.pk).update(gguf_path=path)


def _run_model_gguf(export: AdapterExport, tmp: Path) -> None:
    adapter = export.adapter
    progress = _Progress(export, 0.0, 0.5)
    merged = tmp / "merged"
    check = _merged_folder(adapter, merged, progress)
    out = tmp / f"{adapter_slug(adapter)}.{export.quantization}.gguf"
    gguf_engine.export_model(merged, out, export.quantization, name=f"{adapter} (merged)",
                             progress=_Progress(export, 0.5, 0.85))
    shutil.rmtree(merged, ignore_errors=True)
    bar = _Progress(export)
    bar(0.85, f"llama.cpp wrote the {export.quantization} GGUF ({out.stat().st_size / 1e6:.1f} MB)")
    verification = {"merge_check": check}
    base = _base_gguf(adapter)
    if base is not None:
        verification["tokenizer"] = tokenizer = gguf_engine.compare_tokenizer(out, base)
        event(EXPORT, export.pk, tokenizer["message"], level="info" if tokenizer["identical"] else "warning")
    verification.update(_verify(export, bar, out))
    path = storage_save_file(f"{_storage_prefix(export)}/{out.name}", out)
    _complete(export, path=path, size=out.stat().st_size, sha256=file_sha256(out), verification=verification)
