from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from datasets_app.engine.dedup import DedupConfig
from datasets_app.engine.formats import FORMAT_CHOICES, DatasetFileError, parse_dataset_file
from datasets_app.engine.splits import SPLITS, assign_splits, contamination
from datasets_app.engine.stats import token_statistics
from datasets_app.engine.validate import ValidationConfig, validate_records
from datasets_app.engine.writers import ConversionError, write_records
from datasets_app.jobs import DATASET
from datasets_app.models import Dataset
from nexus.catalog import base_model_default
from nexus.errors import NexusError
from nexus.quotas import quota_check
from nexus.redact import jsonb_safe, public_text
from nexus.models import BaseModel, JobEvent, Team
from nexus.jobs import enqueue, event
from nexus.storage import local_path, storage_delete_prefix, storage_save_bytes
from training_app.engine.data import load_tokenizer
from nexus.catalog import hf_meta

MAX_LISTED_PROBLEMS = 10_000


def _progress(dataset: Dataset, percent: int, stage: str) -> None:
    event(DATASET, dataset.pk, f"{percent}%: {stage}", level="debug", data={"progress": percent, "stage": stage})


def _folder(dataset: Dataset) -> str:
    return f"datasets/team-{dataset.team_id}/dataset-{dataset.pk}"


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


@transaction.atomic
def dataset_create(*, team: Team, user, name: str, file: UploadedFile, description: str = "", format: str = "auto") -> Dataset:
    if format not in FORMAT_CHOICES:
        raise NexusError(f"format: unknown format '{format}'. Choose one of: {', '.join(FORMAT_CHOICES)}.",
                         code="validation_error", details={"format": format})
    if file.size is not None and file.size > settings.NEXUS_MAX_UPLOAD_BYTES:
        raise NexusError(
            f"The file is {file.size / 1e6:.1f} MB; the upload limit is {settings.NEXUS_MAX_UPLOAD_BYTES / 1e6:.0f} MB.",
            code="file_too_large",
            status_code=413,
        )
    if not file.size:
        raise NexusError(f"{file.name} is empty: there are no records to read.", code="empty_file", details={"file": file.name})
    quota_check(team=team, kind="processing_datasets")
    filename = file.name.replace("\x00", "")  # Postgres text cannot hold NUL; a file name never needs one
    dataset = Dataset(team=team, created_by=user, name=(name.replace("\x00", "").strip() or Path(filename).name)[:200],
                      description=description.replace("\x00", ""), format=format, original_filename=filename,
                      file_size=file.size or 0)
    dataset.original_file.save(Path(filename).name, file, save=False)
    dataset.full_clean()
    dataset.save()
    event(DATASET, dataset.pk, f"Uploaded {filename} ({dataset.file_size:,} bytes)")
    enqueue(DATASET, dataset.pk)
    return dataset


@transaction.atomic
def dataset_revalidate(*, dataset: Dataset, base_model: BaseModel | None = None, max_tokens: int | None = None,
                       min_tokens: int | None = None, dedup: dict | None = None, languages: list[str] | None = None
                       ) -> Dataset:
    """Run processing again from the untouched original (e.g. against another model's tokenizer)."""
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    if dataset.status in (Dataset.Status.UPLOADING, Dataset.Status.PROCESSING):
        raise NexusError("The dataset is being processed; wait for it to finish.", code="busy", status_code=409)
    if dataset.parent_id and not dataset.original_file:
        raise NexusError("A split has no original upload to validate again; validate its parent.", code="invalid")
    quota_check(team=dataset.team, kind="processing_datasets")
    config = {"base_model_id": base_model.pk if base_model else None, "max_tokens": max_tokens, "min_tokens": min_tokens,
              "dedup": dedup or {}, "languages": languages or []}
    Dataset.objects.filter(pk=dataset.pk).update(status=Dataset.Status.UPLOADING, validation_config=config,
                                                 updated_at=timezone.now())
    event(DATASET, dataset.pk, "Validation requested" + (f" with the {base_model.name} tokenizer" if base_model else ""))
    enqueue(DATASET, dataset.pk)
    dataset.refresh_from_db()
    return dataset


def dataset_process(*, dataset_id: int) -> Dataset:
    """Parse, validate, find duplicates and count tokens from the original upload; ends `ready` or `error`."""
    dataset = Dataset.objects.select_related("validated_with").get(pk=dataset_id)
    config = dataset.validation_config or {}
    try:
        with local_path(dataset.original_file.name) as path:
            parsed = parse_dataset_file(path, format=dataset.format, name=dataset.original_filename or path.name)
    except DatasetFileError as exc:
        return dataset_fail(dataset=dataset, message=exc.message, details={"line": exc.line})
    d = parsed.detection
    _progress(dataset, 30, "parsed")
    event(DATASET, dataset.pk, f"Read {parsed.total_records} records from a {parsed.file_type} file as {parsed.format}"
           + (f" (detected with confidence {d.confidence:.0%}: {d.evidence})" if d and dataset.format == "auto" else ""))
    model = BaseModel.objects.filter(pk=config.get("base_model_id")).first() if config.get("base_model_id") else None
    model = model or base_model_default()
    if model is not None and not model.hf_path:
        return dataset_fail(dataset=dataset, message=f"The model '{model.name}' has no local HF folder, so its tokenizer "
                                                     "cannot count tokens; validate with a model registered with one.")
    validation = ValidationConfig(
        max_tokens=config.get("max_tokens") or (model.context_length if model and model.context_length else None),
        min_tokens=config["min_tokens"] if config.get("min_tokens") is not None else 1,
        languages=config.get("languages") or [],
        dedup=DedupConfig(**{k: v for k, v in (config.get("dedup") or {}).items() if k in ("threshold", "shingle_size")}))
    report = validate_records(parsed, load_tokenizer(hf_meta(model)) if model else None, validation,
                              tokenizer_name=model.name if model else None,
                              progress=lambda percent, stage: _progress(dataset, percent, stage))
    records, problems, stats = report.records, report.problems, report.statistics
    if not records:
        first = problems[0].message if problems else "no usable records"
        return dataset_fail(dataset=dataset, message=f"None of the {parsed.total_records} records is usable; first problem: {first}")
    event(DATASET, dataset.pk, "Duplicates: {exact_duplicates} exact, {near_duplicates} near, {overlap_clusters} prompts with different answers"
           .format(**stats["duplicates"]))
    name = storage_save_bytes(f"{_folder(dataset)}/normalized.jsonl", _jsonl(records))
    valid_indices = {r["source_index"] for r in records}
    with transaction.atomic():
        current = Dataset.objects.select_for_update().get(pk=dataset.pk)
        Dataset.objects.filter(pk=dataset.pk).update(
            status=Dataset.Status.READY,
            format=parsed.format if dataset.format == "auto" else dataset.format,
            file_type=parsed.file_type,
            detection=jsonb_safe({"format": d.format, "confidence": d.confidence, "evidence": d.evidence,
                                  "votes": d.votes}) if d else {},
            normalized_file=name,
            num_examples=len(records),
            num_invalid=len(problems),
            total_tokens=stats["total_tokens"],
            # NUL is valid in a record's text but not in Postgres JSON: samples and messages show it as ␀
            statistics=jsonb_safe(stats),
            validation_errors=jsonb_safe([p.as_dict() for p in problems[:MAX_LISTED_PROBLEMS]]),
            duplicates=jsonb_safe(report.duplicates),
            # a decision made earlier survives re-validation for the records that still exist
            excluded_indices=sorted(i for i in current.excluded_indices if i in valid_indices),
            validated_with=model,
            error_message="",
            updated_at=timezone.now(),
        )
        event(DATASET, dataset.pk, f"Ready: {len(records)} valid, {len(problems)} invalid of {parsed.total_records} records ({parsed.format})",
               type=JobEvent.Type.STATUS, data={"status": "ready"})
    dataset.refresh_from_db()
    return dataset


@transaction.atomic
def dataset_fail(*, dataset: Dataset, message: str, details: dict | None = None) -> Dataset:
    # Nothing half-written: an errored dataset carries no usable-looking counts or normalized file.
    message = public_text(message)
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.ERROR, error_message=message, normalized_file="", num_examples=0, num_invalid=0,
        total_tokens=0, statistics={}, duplicates={},
        validation_errors=[{"category": "file", "message": message, "line": None, "index": None, **(details or {})}],
        updated_at=timezone.now(),
    )
    event(DATASET, dataset.pk, message, level="error", type=JobEvent.Type.STATUS, data={"status": "error"})
    dataset.refresh_from_db()
    return dataset


def dataset_all_records(*, dataset: Dataset) -> list[dict]:
    """Every valid record, including those the user excluded as duplicates."""
    if dataset.status != Dataset.Status.READY or not dataset.normalized_file:
        raise NexusError(f"Dataset '{dataset.name}' is not ready (status: {dataset.status}).", code="dataset_not_ready",
                         status_code=409)
    with local_path(dataset.normalized_file) as path:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def dataset_load_records(*, dataset: Dataset) -> list[dict]:
    """The usable set: valid records minus the ones the user chose to remove."""
    excluded = set(dataset.excluded_indices or [])
    return [r for r in dataset_all_records(dataset=dataset) if r["source_index"] not in excluded]


@transaction.atomic
def dataset_update(*, dataset: Dataset, name: str | None = None, description: str | None = None) -> Dataset:
    if name is not None:
        if not name.strip():
            raise NexusError("name: may not be blank", code="validation_error", details={"name": "blank"})
        dataset.name = name.strip()[:200]
    if description is not None:
        dataset.description = description
    dataset.full_clean()
    dataset.save(update_fields=["name", "description", "updated_at"])
    return dataset


@transaction.atomic
def dataset_delete(*, dataset: Dataset) -> None:
    if dataset.finetuning_jobs.exists():
        raise NexusError("The dataset was used by fine-tuning jobs; delete those jobs first to keep their history true.",
                         code="in_use", status_code=409)
    folder = _folder(dataset)
    original = dataset.original_file.name
    dataset.delete()

    def remove_files() -> None:
        storage_delete_prefix(folder)
        if original:
            from django.core.files.storage import default_storage

            default_storage.delete(original)

    transaction.on_commit(remove_files)


@transaction.atomic
def dataset_dedup_apply(*, dataset: Dataset, user, action: str, kinds: list[str] | None = None) -> Dataset:
    """`remove` leaves out all but the first record of each chosen cluster kind; `restore` brings them back.
    Recorded in dedup_actions; the normalized file and the original are untouched."""
    dataset = Dataset.objects.select_for_update().get(pk=dataset.pk)
    if dataset.status != Dataset.Status.READY:
        raise NexusError(f"Dataset is not ready (status: {dataset.status}).", code="dataset_not_ready", status_code=409)
    kinds = kinds or ["exact", "near"]
    unknown = set(kinds) - {"exact", "near", "overlap"}
    if unknown:
        raise NexusError(f"kinds: unknown cluster kind(s) {sorted(unknown)}; use exact, near, overlap",
                         code="validation_error", details={"kinds": sorted(unknown)})
    if action == "remove":
        clusters = dataset.duplicates.get("clusters", {})
        drop = {i for kind in kinds for c in clusters.get(kind, []) for i in sorted(c)[1:]}
        excluded = sorted(set(dataset.excluded_indices) | drop)
    elif action == "restore":
        drop = set(dataset.excluded_indices)
        excluded = []
    else:
        raise NexusError("action: must be 'remove' or 'restore'", code="validation_error", details={"action": action})
    changed = len(set(excluded) ^ set(dataset.excluded_indices))
    dataset.excluded_indices = excluded
    dataset.dedup_actions = [*dataset.dedup_actions, {"action": action, "kinds": kinds, "records": changed,
                                                      "by": getattr(user, "username", None), "at": timezone.now().isoformat()}]
    dataset.save(update_fields=["excluded_indices", "dedup_actions", "updated_at"])
    event(DATASET, dataset.pk, f"{'Removed' if action == 'remove' else 'Restored'} {changed} duplicate record(s) ({', '.join(kinds)}); "
                    f"{dataset.num_usable} usable")
    return dataset


@transaction.atomic
def dataset_split(*, dataset: Dataset, user, train: float = 0.8, val: float = 0.1, test: float = 0.1, seed: int = 42,
                  against: Dataset | None = None) -> list[Dataset]:
    """Seeded train/val/test split of the usable records; exact and near duplicates and repeated
    prompts stay on one side. Every split is then checked against the others (and `against`)."""
    fractions = {"train": train, "val": val, "test": test}
    for key, value in fractions.items():
        if not 0 <= value <= 1:
            raise NexusError(f"{key}: must be between 0 and 1", code="validation_error", details={key: value})
    if abs(sum(fractions.values()) - 1) > 1e-6:
        raise NexusError(f"train + val + test must be 1, got {sum(fractions.values()):g}", code="validation_error",
                         details=fractions)
    records = dataset_load_records(dataset=dataset)
    if len(records) < 3:
        raise NexusError(f"Need at least 3 usable records to split, have {len(records)}.", code="too_small")
    parts = assign_splits(records, dataset.duplicates.get("clusters", {}), fractions, seed)
    created = []
    for name in SPLITS:
        rows = parts[name]
        if not rows:
            continue
        child = Dataset(team=dataset.team, created_by=user, name=f"{dataset.name} [{name}]"[:200],
                        description=f"{name} split of '{dataset.name}' (seed {seed}, {train:g}/{val:g}/{test:g})",
                        format="chatml", status=Dataset.Status.READY, parent=dataset, split=name,
                        file_type="jsonl", num_examples=len(rows), total_tokens=sum(r.get("tokens", 0) for r in rows),
                        validated_with=dataset.validated_with, original_filename=f"{name}.jsonl")
        child.save()
        child.normalized_file = storage_save_bytes(f"{_folder(child)}/normalized.jsonl", _jsonl(rows))
        child.original_file.save(f"{name}.jsonl", ContentFile(write_records(rows, fmt="chatml", file_type="jsonl")[0]), save=False)
        counts = [(r.get("prompt_tokens", 0), r.get("response_tokens", 0)) for r in rows]
        child.statistics = {**token_statistics(rows, counts, tokenizer_name=dataset.statistics.get("tokenizer")),
                            "total_records": len(rows), "valid": len(rows), "invalid": 0}
        child.save()
        event(DATASET, child.pk, f"Created as the {name} split of dataset #{dataset.pk} with {len(rows)} records",
               type=JobEvent.Type.STATUS, data={"status": "ready"})
        created.append(child)
    threshold = (dataset.validation_config.get("dedup") or {}).get("threshold")
    for child in created:
        others = [c for c in created if c.pk != child.pk] + ([against] if against else [])
        checks = {str(o.pk): dataset_contamination(dataset=child, against=o, threshold=threshold)["contaminated_records"]
                  for o in others}
        child.statistics = {**child.statistics, "contamination": checks}
        child.save(update_fields=["statistics", "updated_at"])
    event(DATASET, dataset.pk, "Split into " + ", ".join(f"{c.split} {c.num_examples}" for c in created) + f" (seed {seed})")
    return created


def dataset_contamination(*, dataset: Dataset, against: Dataset, threshold: float | None = None) -> dict[str, Any]:
    """Records of `dataset` that are exact or near duplicates of records in `against`, or share its prompts."""
    return {"dataset": dataset.pk, "against": against.pk,
            **contamination(dataset_load_records(dataset=dataset), dataset_load_records(dataset=against), threshold)}


def dataset_export(*, dataset: Dataset, fmt: str, file_type: str) -> tuple[bytes, dict[str, int]]:
    try:
        return write_records(dataset_load_records(dataset=dataset), fmt=fmt, file_type=file_type)
    except ConversionError as exc:
        raise NexusError(str(exc), code="validation_error") from exc


def dataset_convert_file(*, file: UploadedFile, from_format: str, to_format: str, file_type: str) -> tuple[bytes, dict]:
    """Convert an uploaded file without storing it; invalid records are reported, not converted."""
    import tempfile

    if file.size and file.size > settings.NEXUS_MAX_UPLOAD_BYTES:
        raise NexusError(f"The file is {file.size / 1e6:.1f} MB; the upload limit is "
                         f"{settings.NEXUS_MAX_UPLOAD_BYTES / 1e6:.0f} MB.", code="file_too_large", status_code=413)
    with tempfile.NamedTemporaryFile(suffix=Path(file.name).suffix) as tmp:
        for chunk in file.chunks():
            tmp.write(chunk)
        tmp.flush()
        try:
            parsed = parse_dataset_file(tmp.name, format=from_format, name=file.name)
        except DatasetFileError as exc:
            raise NexusError(exc.message, code="invalid_file", details={"line": exc.line}) from exc
    try:
        data, notes = write_records(parsed.records, fmt=to_format, file_type=file_type)
    except ConversionError as exc:
        raise NexusError(str(exc), code="validation_error") from exc
    return data, {"from_format": parsed.format, "records": len(parsed.records), "invalid": len(parsed.problems),
                  "problems": [p.as_dict() for p in parsed.problems[:100]], "lossy": notes}
