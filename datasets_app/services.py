from __future__ import annotations

import functools
import json
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from datasets_app.engine.formats import FORMAT_CHOICES, DatasetFileError, parse_dataset_file
from datasets_app.engine.stats import token_statistics
from datasets_app.models import Dataset
from nexus.catalog import base_model_default
from nexus.errors import NexusError
from nexus.events import job_event_record
from nexus.models import BaseModel, JobEvent, Team
from nexus.queueing import QUEUE_ERROR, enqueue_on_commit
from nexus.storage import local_path, storage_save_bytes

MAX_LISTED_PROBLEMS = 1000


def _event(dataset: Dataset, message: str, level: str = "info", type: str = JobEvent.Type.LOG, data: dict | None = None) -> None:
    job_event_record(kind=JobEvent.Kind.DATASET, job_id=dataset.pk, message=message, level=level, type=type, data=data)


@transaction.atomic
def dataset_create(*, team: Team, user, name: str, file: UploadedFile, description: str = "", format: str = "auto") -> Dataset:
    if format not in FORMAT_CHOICES:
        raise NexusError(f"Unknown format '{format}'. Choose one of: {', '.join(FORMAT_CHOICES)}.", code="invalid", details={"format": format})
    if file.size is not None and file.size > settings.NEXUS_MAX_UPLOAD_BYTES:
        raise NexusError(
            f"The file is {file.size / 1e6:.1f} MB; the upload limit is {settings.NEXUS_MAX_UPLOAD_BYTES / 1e6:.0f} MB.",
            code="file_too_large",
            status_code=413,
        )
    if not file.size:
        raise NexusError(f"{file.name} is empty: there are no records to read.", code="empty_file", details={"file": file.name})
    dataset = Dataset(team=team, created_by=user, name=(name.strip() or Path(file.name).name)[:200], description=description, format=format,
                      original_filename=file.name, file_size=file.size or 0)
    dataset.original_file.save(Path(file.name).name, file, save=False)
    dataset.full_clean()
    dataset.save()
    _event(dataset, f"Uploaded {file.name} ({dataset.file_size:,} bytes)")
    from datasets_app.tasks import process_dataset

    enqueue_on_commit(process_dataset, dataset.pk, on_error=lambda exc: _event(
        dataset, QUEUE_ERROR.format(error=exc, status="uploaded"), level="error"))
    return dataset


def dataset_claim(*, dataset_id: int) -> bool:
    return bool(
        Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.UPLOADED).update(
            status=Dataset.Status.PROCESSING, updated_at=timezone.now())
    )


def datasets_requeue(*, stale_after_s: int = 2400) -> list[int]:
    """Send again what a lost message or a dead worker left behind. Processing is idempotent (it
    rewrites the normalized file from the untouched original), so a stale `processing` row goes
    back to `uploaded`."""
    from datasets_app.tasks import process_dataset

    cutoff = timezone.now() - timezone.timedelta(seconds=stale_after_s)
    stale = list(Dataset.objects.filter(status=Dataset.Status.PROCESSING, updated_at__lt=cutoff).values_list("pk", flat=True))
    Dataset.objects.filter(pk__in=stale, status=Dataset.Status.PROCESSING).update(status=Dataset.Status.UPLOADED)
    for pk in stale:
        _event(Dataset(pk=pk), "Processing was interrupted (worker lost); processing again", level="warning")
    ids = list(Dataset.objects.filter(status=Dataset.Status.UPLOADED).values_list("pk", flat=True))
    for pk in ids:
        process_dataset.delay(pk)
    return ids


def _tokenizer_for(model: BaseModel | None):
    if model is None or not model.hf_path:
        return None
    return _load_tokenizer(model.hf_path)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def dataset_process(*, dataset_id: int, base_model: BaseModel | None = None) -> Dataset:
    """Parse and validate the original upload into the normalized JSONL; ends `ready` or `error`."""
    dataset = Dataset.objects.get(pk=dataset_id)
    _event(dataset, "Processing started", type=JobEvent.Type.STATUS, data={"status": "processing"})
    try:
        with local_path(dataset.original_file.name) as path:
            parsed = parse_dataset_file(path, format=dataset.format, name=dataset.original_filename or path.name)
    except DatasetFileError as exc:
        return dataset_fail(dataset=dataset, message=exc.message, details={"line": exc.line})
    problems = [p.as_dict() for p in parsed.problems]
    for problem in parsed.problems[:20]:
        _event(dataset, problem.message, level="warning")
    model = base_model or base_model_default()
    stats = token_statistics(parsed.records, _tokenizer_for(model))
    by_category: dict[str, int] = {}
    for p in parsed.problems:
        by_category[p.category] = by_category.get(p.category, 0) + 1
    stats.update({
        "total_records": parsed.total_records,
        "valid": len(parsed.records),
        "invalid": len(parsed.problems),
        "invalid_by_category": by_category,
        "tokenizer": model.name if model else None,
    })
    normalized = "\n".join(json.dumps(r, ensure_ascii=False) for r in parsed.records) + "\n"
    name = storage_save_bytes(f"datasets/team-{dataset.team_id}/dataset-{dataset.pk}/normalized.jsonl", normalized.encode())
    with transaction.atomic():
        Dataset.objects.filter(pk=dataset.pk).update(
            status=Dataset.Status.READY,
            format=parsed.format,
            normalized_file=name,
            num_examples=len(parsed.records),
            num_invalid=len(parsed.problems),
            total_tokens=stats["total_tokens"],
            statistics=stats,
            validation_errors=problems[:MAX_LISTED_PROBLEMS],
            error_message="",
        )
        _event(dataset, f"Ready: {len(parsed.records)} valid, {len(parsed.problems)} invalid of {parsed.total_records} records ({parsed.format})",
               type=JobEvent.Type.STATUS, data={"status": "ready"})
    dataset.refresh_from_db()
    return dataset


@transaction.atomic
def dataset_fail(*, dataset: Dataset, message: str, details: dict | None = None) -> Dataset:
    # Nothing half-written: an errored dataset carries no usable-looking counts or normalized file.
    Dataset.objects.filter(pk=dataset.pk).update(
        status=Dataset.Status.ERROR, error_message=message, normalized_file="", num_examples=0, num_invalid=0,
        total_tokens=0, statistics={}, validation_errors=[{"category": "file", "message": message, **(details or {})}],
    )
    _event(dataset, message, level="error", type=JobEvent.Type.STATUS, data={"status": "error"})
    dataset.refresh_from_db()
    return dataset


def dataset_load_records(*, dataset: Dataset) -> list[dict]:
    if dataset.status != Dataset.Status.READY or not dataset.normalized_file:
        raise NexusError(f"Dataset '{dataset.name}' is not ready (status: {dataset.status}).", code="dataset_not_ready")
    with local_path(dataset.normalized_file) as path:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
