from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from datasets_app.models import Dataset
from nexus.models import JobEvent
from nexus.teams import get_for_user, visible_to
from nexus.catalog import hf_meta


def dataset_list(*, user, team=None) -> QuerySet[Dataset]:
    qs = visible_to(Dataset.objects.select_related("team"), user)
    return qs.filter(team=team) if team is not None else qs


def dataset_list_lean(*, user, team=None) -> QuerySet[Dataset]:
    """The list as the API pages it: without the large per-dataset JSON (problems, statistics,
    duplicate clusters), with the excluded count computed in the database."""
    from django.db.models import F, Func, IntegerField
    from django.db.models.functions import Greatest

    excluded = Func(F("excluded_indices"), function="jsonb_array_length", output_field=IntegerField())
    return dataset_list(user=user, team=team).select_related(None).defer(
        "validation_errors", "statistics", "duplicates", "excluded_indices", "dedup_actions", "detection",
        "validation_config").select_related("validated_with").annotate(
        num_excluded=excluded, num_usable_now=Greatest(F("num_examples") - excluded, 0))


def dataset_get(*, user, pk: int, write: bool = False) -> Dataset:
    return get_for_user(Dataset.objects.select_related("team", "validated_with"), user, pk=pk, write=write)


def dataset_validation_sibling(*, user, dataset: Dataset) -> Dataset | None:
    """The ready "val" split made from the same parent as `dataset` (a "train" split), if any."""
    if not dataset.parent_id:
        return None
    return (dataset_list(user=user).filter(parent_id=dataset.parent_id, split="val", status=Dataset.Status.READY)
            .exclude(pk=dataset.pk).first())


def page(items: list, offset: int, limit: int) -> dict[str, Any]:
    return {"count": len(items), "offset": offset, "limit": limit, "results": items[offset:offset + limit]}


def dataset_preview(*, dataset: Dataset, offset: int = 0, limit: int = 20) -> dict[str, Any]:
    from datasets_app.services import dataset_all_records

    excluded = set(dataset.excluded_indices or [])
    records = dataset_all_records(dataset=dataset)
    for r in records:
        r["excluded"] = r["source_index"] in excluded
    return page(records, offset, limit)


def dataset_validation_errors(*, dataset: Dataset, offset: int = 0, limit: int = 50, category: str | None = None) -> dict[str, Any]:
    problems = [p for p in dataset.validation_errors if not category or p.get("category") == category]
    body = page(problems, offset, limit)
    totals = dataset.statistics.get("invalid_by_category", {})
    body["count"] = totals.get(category, body["count"]) if category else sum(totals.values()) or body["count"]
    body["listed"] = len(problems)  # at most the first 10,000 are kept with their lines
    body["by_category"] = dataset.statistics.get("invalid_by_category", {})
    return body


def dataset_training_estimate(*, dataset: Dataset) -> dict[str, Any]:
    """Training time for the default preset from throughput measured by finished jobs on this
    deployment (never a guess): tokens a job would see / measured tokens per second."""
    from training_app.engine.config import TrainingConfig
    from training_app.engine.data import load_tokenizer, template_overhead
    from training_app.engine.estimate import estimate_time
    from training_app.selectors import measured_throughput

    model = dataset.validated_with
    if model is None or not model.hf_path:
        return {"available": False, "reason": "the dataset was not validated with a trainable base model"}
    tps, jobs = measured_throughput(model=model)
    if not jobs:
        return {"available": False, "reason": f"no completed job on {model.name} has measured throughput here yet; "
                                              "train once and the estimate appears"}
    training = TrainingConfig()
    # as a job on this model gets it: the default max_seq_length, cut to the model's context
    training.max_seq_length = min(training.max_seq_length, model.context_length or training.max_seq_length)
    estimate = estimate_time(total_tokens=dataset.total_tokens, num_examples=dataset.num_examples,
                             num_usable=dataset.num_usable, template_tokens=template_overhead(load_tokenizer(hf_meta(model)))[0],
                             training=training, tokens_per_second=tps)
    return {
        "available": True,
        "base_model": model.name,
        "preset": f"defaults ({training.num_epochs:g} epochs)",
        "tokens_per_second": estimate["tokens_per_second"],
        "measured_by_jobs": jobs,
        "tokens": estimate["tokens"],
        "seconds": estimate["seconds"],
    }


def dataset_progress(*, dataset: Dataset) -> int:
    """Processing progress in percent, from the latest progress event (0 when none yet)."""
    if dataset.status in (Dataset.Status.READY, Dataset.Status.ERROR):
        return 100
    event = (JobEvent.objects.filter(job_kind=JobEvent.Kind.DATASET, job_id=dataset.pk, data__has_key="progress")
             .order_by("-seq").first())
    return int(event.data["progress"]) if event else 0
