from __future__ import annotations

import functools
import threading
import json
import random
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from datasets_app.engine.dedup import DedupConfig, find_duplicates, normalize, prompt_text, record_text
from datasets_app.engine.formats import FORMAT_CHOICES, DatasetFileError, RecordProblem, parse_dataset_file
from datasets_app.engine.stats import count_tokens, token_statistics
from datasets_app.engine.writers import ConversionError, write_records
from datasets_app.models import Dataset
from nexus.catalog import base_model_default
from nexus.errors import NexusError
from nexus.quotas import quota_check
from nexus.redact import jsonb_safe, public_text
from nexus.events import job_event_record
from nexus.models import BaseModel, JobEvent, Team
from nexus.queueing import QUEUE_ERROR, enqueue_on_commit
from nexus.storage import local_path, storage_delete_prefix, storage_save_bytes

MAX_LISTED_PROBLEMS = 10_000
MAX_LISTED_CLUSTERS = 2_000
SPLITS = ("train", "val", "test")


def _event(dataset: Dataset, message: str, level: str = "info", type: str = JobEvent.Type.LOG, data: dict | None = None) -> None:
    job_event_record(kind=JobEvent.Kind.DATASET, job_id=dataset.pk, message=message, level=level, type=type, data=data)


def _progress(dataset: Dataset, percent: int, stage: str) -> None:
    _event(dataset, f"{percent}%: {stage}", level="debug", data={"progress": percent, "stage": stage})


def _folder(dataset: Dataset) -> str:
    return f"datasets/team-{dataset.team_id}/dataset-{dataset.pk}"


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
    _event(dataset, f"Uploaded {filename} ({dataset.file_size:,} bytes)")
    _enqueue_processing(dataset)
    return dataset


def _enqueue_processing(dataset: Dataset) -> None:
    from datasets_app.tasks import process_dataset

    enqueue_on_commit(process_dataset, dataset.pk, on_error=lambda exc: _event(
        dataset, QUEUE_ERROR.format(error=exc, status="uploading"), level="error"))


def dataset_claim(*, dataset_id: int) -> bool:
    return bool(
        Dataset.objects.filter(pk=dataset_id, status=Dataset.Status.UPLOADING).update(
            status=Dataset.Status.PROCESSING, updated_at=timezone.now())
    )


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
    _event(dataset, "Validation requested" + (f" with the {base_model.name} tokenizer" if base_model else ""))
    _enqueue_processing(dataset)
    dataset.refresh_from_db()
    return dataset


def datasets_requeue(*, stale_after_s: int = 2400) -> list[int]:
    """Send again what a lost message or a dead worker left behind. Processing is idempotent (it
    rewrites the normalized file from the untouched original), so a stale `processing` row goes
    back to `uploading`."""
    from datasets_app.tasks import process_dataset

    cutoff = timezone.now() - timezone.timedelta(seconds=stale_after_s)
    stale = list(Dataset.objects.filter(status=Dataset.Status.PROCESSING, updated_at__lt=cutoff).values_list("pk", flat=True))
    Dataset.objects.filter(pk__in=stale, status=Dataset.Status.PROCESSING).update(status=Dataset.Status.UPLOADING)
    for pk in stale:
        _event(Dataset(pk=pk), "Processing was interrupted (worker lost); processing again", level="warning")
    ids = list(Dataset.objects.filter(status=Dataset.Status.UPLOADING).values_list("pk", flat=True))
    for pk in ids:
        process_dataset.delay(pk)
    return ids


_TRANSFORMERS_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    # transformers resolves its names lazily, and two threads doing that for the first time at once
    # can get "cannot import name 'AutoTokenizer'" (the ASGI server runs views in a thread pool)
    with _TRANSFORMERS_LOCK:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)


def _tokenizer_for(model: BaseModel | None):
    if model is None or not model.hf_path:
        return None
    return _load_tokenizer(model.hf_path)


def _template_overhead(model: BaseModel) -> tuple[int, int]:
    """Tokens the chat template adds: for one exchange, and for each further exchange."""
    from training_app.engine.data import encode_conversation

    tokenizer = _tokenizer_for(model)
    u, a = {"role": "user", "content": ""}, {"role": "assistant", "content": ""}
    one = len(encode_conversation(tokenizer, [u, a], 1 << 20)["input_ids"])
    two = len(encode_conversation(tokenizer, [u, a, u, a], 1 << 20)["input_ids"])
    return one, two - one


def _length_problems(records: list[dict], counts: list[tuple[int, int]], *, min_tokens: int, max_tokens: int | None,
                     overhead: tuple[int, int] = (0, 0)) -> tuple[list[dict], list[tuple[int, int]], list[RecordProblem]]:
    """Too long counts what training sees: content plus the chat template's tokens."""
    kept, kept_counts, problems = [], [], []
    for record, (p, r) in zip(records, counts):
        where = f"line {record['source_line']}" if record.get("source_line") else f"record {record['source_index']}"
        total = p + r
        exchanges = max(1, sum(1 for m in record["messages"] if m["role"] == "assistant"))
        with_template = total + overhead[0] + (exchanges - 1) * overhead[1]
        if max_tokens and with_template > max_tokens:
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "too_long",
                                          f"{where}: {with_template} tokens with the chat template, more than the maximum of {max_tokens}"))
        elif total < min_tokens:
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "too_short",
                                          f"{where}: {total} tokens, fewer than the minimum of {min_tokens}"))
        else:
            kept.append(record)
            kept_counts.append((p, r))
    return kept, kept_counts, problems


def _language_problems(records: list[dict], counts: list[tuple[int, int]], allowed: list[str]
                       ) -> tuple[list[dict], list[tuple[int, int]], list[RecordProblem]]:
    from datasets_app.engine.language import language_problem

    kept, kept_counts, problems = [], [], []
    for record, count in zip(records, counts):
        reason = language_problem(record["messages"], allowed)
        if reason:
            where = f"line {record['source_line']}" if record.get("source_line") else f"record {record['source_index']}"
            problems.append(RecordProblem(record["source_index"], record.get("source_line"), "language", f"{where}: {reason}"))
        else:
            kept.append(record)
            kept_counts.append(count)
    return kept, kept_counts, problems


def _clusters_for_display(records: list[dict], clusters: list[list[int]]) -> list[dict]:
    out = []
    for cluster in clusters[:MAX_LISTED_CLUSTERS]:
        members = [records[i] for i in cluster]
        out.append({
            "members": [m["source_index"] for m in members],
            "lines": [m.get("source_line") for m in members],
            "samples": [record_text(m["messages"])[:160] for m in members[:5]],
        })
    return out


def dataset_process(*, dataset_id: int) -> Dataset:
    """Parse, validate, find duplicates and count tokens from the original upload; ends `ready` or `error`."""
    dataset = Dataset.objects.select_related("validated_with").get(pk=dataset_id)
    config = dataset.validation_config or {}
    _event(dataset, "Processing started", type=JobEvent.Type.STATUS, data={"status": "processing"})
    try:
        with local_path(dataset.original_file.name) as path:
            parsed = parse_dataset_file(path, format=dataset.format, name=dataset.original_filename or path.name)
    except DatasetFileError as exc:
        return dataset_fail(dataset=dataset, message=exc.message, details={"line": exc.line})
    d = parsed.detection
    _progress(dataset, 30, "parsed")
    _event(dataset, f"Read {parsed.total_records} records from a {parsed.file_type} file as {parsed.format}"
           + (f" (detected with confidence {d.confidence:.0%}: {d.evidence})" if d and dataset.format == "auto" else ""))
    model = BaseModel.objects.filter(pk=config.get("base_model_id")).first() if config.get("base_model_id") else None
    model = model or base_model_default()
    max_tokens = config.get("max_tokens") or (model.context_length if model and model.context_length else None)
    min_tokens = config["min_tokens"] if config.get("min_tokens") is not None else 1
    counts = count_tokens(parsed.records, _tokenizer_for(model))
    overhead = _template_overhead(model) if model else (0, 0)
    if model is None:
        min_tokens, max_tokens = 0, None  # no tokenizer: lengths cannot be checked
    _progress(dataset, 50, "tokens counted")
    records, counts, length_problems = _length_problems(parsed.records, counts, min_tokens=min_tokens, max_tokens=max_tokens,
                                                        overhead=overhead)
    if config.get("languages"):
        records, counts, language_problems = _language_problems(records, counts, config["languages"])
        length_problems += language_problems
    problems = sorted(parsed.problems + length_problems, key=lambda p: p.index)
    if not records:
        first = problems[0].message if problems else "no usable records"
        return dataset_fail(dataset=dataset, message=f"None of the {parsed.total_records} records is usable; first problem: {first}")
    dedup_config = DedupConfig(**{k: v for k, v in (config.get("dedup") or {}).items() if k in ("threshold", "shingle_size")})
    report = find_duplicates(records, dedup_config)
    _progress(dataset, 80, "duplicates found")
    _event(dataset, "Duplicates: {exact_duplicates} exact, {near_duplicates} near, {overlap_clusters} prompts with different answers"
           .format(**report.summary()))
    stats = token_statistics(records, counts, tokenizer_name=model.name if model else None)
    by_category: dict[str, int] = {}
    for p in problems:
        by_category[p.category] = by_category.get(p.category, 0) + 1
    stats.update({
        "total_records": parsed.total_records,
        "valid": len(records),
        "invalid": len(problems),
        "invalid_by_category": by_category,
        "duplicates": report.summary(),
        "min_tokens": min_tokens,
        "max_tokens": max_tokens,
    })
    duplicates = {
        "config": report.config,
        "summary": report.summary(),
        "exact": _clusters_for_display(records, report.exact_clusters),
        "near": _clusters_for_display(records, report.near_clusters),
        "overlap": _clusters_for_display(records, report.overlap_clusters),
        "removable": sorted(records[i]["source_index"] for i in report.removable()),
        # every cluster in full (record source indices); the lists above are trimmed for display
        "clusters": {kind: [[records[i]["source_index"] for i in c] for c in clusters] for kind, clusters in
                     (("exact", report.exact_clusters), ("near", report.near_clusters), ("overlap", report.overlap_clusters))},
    }
    for record, (p, r) in zip(records, counts):
        record["tokens"], record["prompt_tokens"], record["response_tokens"] = p + r, p, r
    normalized = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    name = storage_save_bytes(f"{_folder(dataset)}/normalized.jsonl", normalized.encode())
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
            duplicates=jsonb_safe(duplicates),
            # a decision made earlier survives re-validation for the records that still exist
            excluded_indices=sorted(i for i in current.excluded_indices if i in valid_indices),
            validated_with=model,
            error_message="",
            updated_at=timezone.now(),
        )
        _event(dataset, f"Ready: {len(records)} valid, {len(problems)} invalid of {parsed.total_records} records ({parsed.format})",
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
    _event(dataset, message, level="error", type=JobEvent.Type.STATUS, data={"status": "error"})
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
    _event(dataset, f"{'Removed' if action == 'remove' else 'Restored'} {changed} duplicate record(s) ({', '.join(kinds)}); "
                    f"{dataset.num_usable} usable")
    return dataset


def _split_groups(dataset: Dataset, records: list[dict]) -> list[list[int]]:
    """Positions that must stay on one side: the dataset's exact, near (with its own dedup
    settings) and same-prompt clusters."""
    position = {r["source_index"]: n for n, r in enumerate(records)}
    parent = list(range(len(records)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for clusters in dataset.duplicates.get("clusters", {}).values():
        for cluster in clusters:
            members = [position[i] for i in cluster if i in position]
            for m in members[1:]:
                parent[find(m)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for n in range(len(records)):
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


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
    groups = _split_groups(dataset, records)
    random.Random(seed).shuffle(groups)
    targets = {k: v * len(records) for k, v in fractions.items()}
    parts: dict[str, list[dict]] = {k: [] for k in SPLITS}
    for group in sorted(groups, key=len, reverse=True) if max(map(len, groups)) > 1 else groups:
        # the split furthest below its target takes the whole group
        name = max(SPLITS, key=lambda k: (targets[k] - len(parts[k])) / max(targets[k], 1e-9) if targets[k] else -1)
        parts[name].extend(records[i] for i in group)
    created = []
    for name in SPLITS:
        if not parts[name]:
            continue
        rows = sorted(parts[name], key=lambda r: r["source_index"])
        child = Dataset(team=dataset.team, created_by=user, name=f"{dataset.name} [{name}]"[:200],
                        description=f"{name} split of '{dataset.name}' (seed {seed}, {train:g}/{val:g}/{test:g})",
                        format="chatml", status=Dataset.Status.READY, parent=dataset, split=name,
                        file_type="jsonl", num_examples=len(rows), total_tokens=sum(r.get("tokens", 0) for r in rows),
                        validated_with=dataset.validated_with, original_filename=f"{name}.jsonl")
        child.save()
        child.normalized_file = storage_save_bytes(f"{_folder(child)}/normalized.jsonl",
                                                   "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
        child.original_file.save(f"{name}.jsonl", ContentFile(write_records(rows, fmt="chatml", file_type="jsonl")[0]), save=False)
        counts = [(r.get("prompt_tokens", 0), r.get("response_tokens", 0)) for r in rows]
        child.statistics = {**token_statistics(rows, counts, tokenizer_name=dataset.statistics.get("tokenizer")),
                            "total_records": len(rows), "valid": len(rows), "invalid": 0}
        child.save()
        _event(child, f"Created as the {name} split of dataset #{dataset.pk} with {len(rows)} records",
               type=JobEvent.Type.STATUS, data={"status": "ready"})
        created.append(child)
    threshold = (dataset.validation_config.get("dedup") or {}).get("threshold")
    for child in created:
        others = [c for c in created if c.pk != child.pk] + ([against] if against else [])
        checks = {str(o.pk): dataset_contamination(dataset=child, against=o, threshold=threshold)["contaminated_records"]
                  for o in others}
        child.statistics = {**child.statistics, "contamination": checks}
        child.save(update_fields=["statistics", "updated_at"])
    _event(dataset, "Split into " + ", ".join(f"{c.split} {c.num_examples}" for c in created) + f" (seed {seed})")
    return created


def dataset_contamination(*, dataset: Dataset, against: Dataset, threshold: float | None = None) -> dict[str, Any]:
    """Records of `dataset` that are exact or near duplicates of records in `against`, or share its prompts."""
    mine = dataset_load_records(dataset=dataset)
    theirs = dataset_load_records(dataset=against)
    combined = mine + theirs
    report = find_duplicates(combined, DedupConfig(threshold=threshold) if threshold else DedupConfig())
    n = len(mine)
    pairs: dict[str, list[dict]] = {"exact": [], "near": [], "same_prompt": []}
    for kind, clusters in (("exact", report.exact_clusters), ("near", report.near_clusters),
                           ("same_prompt", report.overlap_clusters)):
        for cluster in clusters:
            a = [combined[i]["source_index"] for i in cluster if i < n]
            b = [combined[i]["source_index"] for i in cluster if i >= n]
            if a and b:
                pairs[kind].append({"dataset": a, "against": b, "sample": prompt_text(combined[cluster[0]]["messages"])[:160]})
    same_prompt = {normalize(prompt_text(r["messages"])) for r in theirs}
    contaminated = {i for kind in pairs for p in pairs[kind] for i in p["dataset"]}
    return {
        "dataset": dataset.pk, "against": against.pk,
        "contaminated_records": len(contaminated),
        "fraction": round(len(contaminated) / max(len(mine), 1), 4),
        "exact": pairs["exact"][:500], "near": pairs["near"][:500], "same_prompt": pairs["same_prompt"][:500],
        "checked_prompts": len(same_prompt),
    }


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
