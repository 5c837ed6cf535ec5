"""Benchmark writes: checking a BenchmarkJob body (10.3.2) down to the field, creating and
cancelling jobs, custom test sets (10.3.3) from a body or a dataset's test split, and the
workloads a worker runs (items, few-shot pool, cache key) built from a job's row."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction

from adapters_app.models import LoRAAdapter
from evaluation_app.engine import suites as suite_registry
from evaluation_app.engine.benchmark import BenchConfig, Workload
from evaluation_app.jobs import BENCHMARK
from evaluation_app.models import BenchmarkJob, CustomBenchmark
from nexus.errors import NexusError
from nexus.fields import bad, number, require, text, unknown
from nexus.jobs import enqueue, status_event
from nexus.models import BaseModel, Team
from nexus.quotas import quota_check
from nexus.storage import cache_path, complete_folders, is_remote, stage_down

JOB_KEYS = {"name", "base_model", "adapter_id", "benchmarks", "backend", "judge_config", "judge_model",
            "judge_api_key", "team"}
CONFIG_KEYS = {"benchmark_name", "num_samples", "num_few_shot", "batch_size", "max_tokens", "temperature",
               "include_reasoning", "samples_per_problem"}
MAX_BENCHMARKS = 12
PROMPT_FORMAT = 1  # bump when the generated tasks change: cached base scores of older formats are not reused


def data_dir() -> Path:
    """Where imported suites are read: NEXUS_DATA_DIR on one machine; with an object store, this
    host's copy of the stored `benchmarks/<name>` folders (fetched again only when they change)."""
    if not is_remote():
        return Path(settings.NEXUS_DATA_DIR)
    root = cache_path("benchmark-data")
    for name in complete_folders("benchmarks"):
        stage_down(f"benchmarks/{name}", into=root / "benchmarks" / name)
    return root


def _custom_lookup(team: Team, value: str, path: str) -> CustomBenchmark:
    ident = value.split(":", 1)[1].strip() if value.lower().startswith("custom:") else value
    rows = CustomBenchmark.objects.filter(team=team)
    row = rows.filter(pk=int(ident)).first() if ident.isdecimal() and len(ident) < 18 else rows.filter(name=ident).first()
    if row is None:
        raise bad(path, f"no custom benchmark '{ident}' in team '{team.name}' (built-in suites: "
                        f"{', '.join(s.name for s in suite_registry.suites())})")
    return row


def _config_parse(team: Team, raw: Any, path: str) -> tuple[dict[str, Any], CustomBenchmark | None]:
    """One BenchmarkConfig: a suite name, or an object with the design's fields."""
    if isinstance(raw, str):
        raw = {"benchmark_name": raw}
    if not isinstance(raw, dict):
        raise bad(path, "must be a benchmark name or a BenchmarkConfig object")
    unknown(raw, CONFIG_KEYS, path)
    require(raw, ["benchmark_name"], path)
    name = text(raw, "benchmark_name", path, max_len=210).strip()
    custom = None
    try:
        suite = suite_registry.suite_get(name.lower())
    except ValueError:
        suite = None
        custom = _custom_lookup(team, name, f"{path}.benchmark_name")
    if suite is not None and not suite_registry.installed(suite, data_dir()):
        raise bad(f"{path}.benchmark_name", f"the {suite.label} data is not installed on this deployment: "
                                            f"{suite_registry.install_hint(suite)}", code="data_not_installed",
                  status=409)
    size = len(custom.test_cases) if custom else len(suite_registry.load_items(suite, data_dir()))
    samples = raw.get("num_samples")
    if samples is not None:
        samples = number(raw, "num_samples", path, lo=1, hi=10**9, default=None, integer=True)
        if samples > size:
            raise bad(f"{path}.num_samples", f"is {samples:,}, but {name} has {size:,} items (leave it null for "
                                             "all of them)")
    kind = "custom" if custom else suite.kind
    config = {
        "benchmark_name": custom.key if custom else suite.name,
        "num_samples": samples,
        "num_few_shot": number(raw, "num_few_shot", path, lo=0, hi=25, default=5, integer=True),
        "batch_size": number(raw, "batch_size", path, lo=1, hi=256, default=8, integer=True),
        "max_tokens": number(raw, "max_tokens", path, lo=1, hi=4096, default=256, integer=True),
        "temperature": number(raw, "temperature", path, lo=0, hi=2, default=0.0),
        "include_reasoning": raw.get("include_reasoning", False),
        "samples_per_problem": number(raw, "samples_per_problem", path, lo=1, hi=20, default=1, integer=True),
    }
    if not isinstance(config["include_reasoning"], bool):
        raise bad(f"{path}.include_reasoning", f"must be true or false, got {config['include_reasoning']!r}")
    if config["include_reasoning"] and kind != "generate":
        raise bad(f"{path}.include_reasoning", f"applies to GSM8K (chain-of-thought generation); {name} is scored "
                                               "by log-likelihood or by running code, where there is no reasoning")
    if config["samples_per_problem"] > 1 and (kind != "code" or config["temperature"] == 0):
        raise bad(f"{path}.samples_per_problem", "applies to HumanEval with temperature > 0 (pass@k needs several "
                                                 "different samples per problem)")
    return config, custom


def _base_and_adapter(team: Team, user, body: dict) -> tuple[BaseModel, LoRAAdapter | None]:
    from nexus.catalog import base_model_lookup

    adapter = None
    if body.get("adapter_id") is not None:
        value = body["adapter_id"]
        if isinstance(value, str) and value.isdecimal() and len(value) < 18:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("adapter_id", f"must be an adapter id, got {value!r}")
        adapter = LoRAAdapter.objects.select_related("base_model").filter(pk=value, team=team).first()
        if adapter is None:
            raise bad("adapter_id", f"no adapter #{value} in team '{team.name}'", status=404)
        if not adapter.path:
            raise bad("adapter_id", f"adapter '{adapter.name}' has no PEFT files to load", code="no_adapter_files",
                      status=409)
    if body.get("base_model") in (None, ""):
        if adapter is None:
            raise bad("base_model", "is required (or give adapter_id: its base model is used)")
        base = adapter.base_model
    else:
        base = base_model_lookup(user=user, value=body["base_model"], team=team)
        if adapter is not None and adapter.base_model_id != base.pk:
            raise bad("base_model", f"adapter '{adapter.name}' was trained on '{adapter.base_model.name}', not "
                                    f"'{base.name}'")
    if not base.hf_path:
        raise bad("base_model", f"'{base.name}' has no model folder (only a GGUF file): benchmarks score "
                                "log-likelihoods with transformers, which needs the HF folder")
    return base, adapter


@transaction.atomic
def benchmark_job_create(*, team: Team, user, body: Any) -> BenchmarkJob:
    """POST /eval/benchmark: the design's BenchmarkJob. Base and (when adapter_id is given) base +
    adapter on the same items with the same settings, on a GPU-queue worker."""
    from datasets_app.distillation.services import _check_running, teacher_parse
    from evaluation_app.services import judge_body

    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, JOB_KEYS, "")
    benchmarks = body.get("benchmarks")
    if not isinstance(benchmarks, list) or not benchmarks:
        raise bad("benchmarks", "must be a non-empty list of BenchmarkConfig objects (or suite names), e.g. "
                                '[{"benchmark_name": "mmlu", "num_samples": 200}]')
    if len(benchmarks) > MAX_BENCHMARKS:
        raise bad("benchmarks", f"at most {MAX_BENCHMARKS} benchmarks in one job, got {len(benchmarks)}")
    base, adapter = _base_and_adapter(team, user, body)
    configs, names = [], set()
    for i, raw in enumerate(benchmarks):
        config, _custom = _config_parse(team, raw, f"benchmarks[{i}]")
        if config["benchmark_name"] in names:
            raise bad(f"benchmarks[{i}].benchmark_name", f"{config['benchmark_name']} is listed twice")
        names.add(config["benchmark_name"])
        configs.append(config)
    backend = text(body, "backend", "", max_len=32, default="hf") or "hf"
    if backend != "hf":
        raise bad("backend", "only 'hf' (transformers through lm-eval) scores every suite correctly here; the "
                             "llama.cpp server's echoed log-probabilities are off by one token (see "
                             "GET /eval/benchmark/suites, 'backends')")
    judge_fields: dict[str, Any] = {}
    connection = None
    body = judge_body(body)
    if body.get("judge_config") is not None:
        judge = teacher_parse(team=team, user=user, raw=body["judge_config"], path="judge_config")
        _check_running(judge, "judge_config")
        judge_fields = judge.fields()
        judge_fields.update(temperature=0.0, max_tokens=min(judge_fields["max_tokens"], 64))
        connection = judge.connection
    name = text(body, "name", "", max_len=200).strip() or (
        f"{adapter.name if adapter else base.name}: {', '.join(c['benchmark_name'] for c in configs)}")[:200]
    quota_check(team=team, kind="active_evaluations")
    from evaluation_app.engine.harness import lm_eval_version

    job = BenchmarkJob.objects.create(team=team, created_by=user, name=name, base_model=base, adapter=adapter,
                                      benchmarks=configs, backend=backend, lm_eval_version=lm_eval_version(),
                                      connection=connection, **judge_fields)
    status_event(BENCHMARK, job.pk, "queued", f"Queued: {len(configs)} benchmark(s) on {base.name}"
                 + (f" and {base.name} + {adapter.name}" if adapter else ""))
    enqueue(BENCHMARK, job.pk)
    return job


def benchmark_job_cancel(*, job: BenchmarkJob) -> BenchmarkJob:
    from evaluation_app.services import _cancel

    return _cancel(BENCHMARK, BenchmarkJob, job.pk, "benchmark job")


# -- custom test sets -----------------------------------------------------------------------------------


def _sha(test_cases: list, scoring: dict) -> str:
    return hashlib.sha256(json.dumps({"test_cases": test_cases, "scoring": scoring}, sort_keys=True,
                                     ensure_ascii=False).encode()).hexdigest()


def _from_dataset(*, team: Team, user, body: dict) -> tuple[dict, Any]:
    """A similarity set from a dataset's test split: each record's last user turn is the prompt and
    the assistant's answer that follows it is the reference."""
    from datasets_app.services import dataset_load_records
    from evaluation_app.engine.custom import cases_from_pairs

    unknown(body, {"name", "description", "dataset_id", "num_cases", "threshold", "team"}, "")
    require(body, ["name", "dataset_id"])
    from evaluation_app.services import test_split_of

    dataset = test_split_of(user=user, team=team, body=body)
    limit = number(body, "num_cases", "", lo=1, hi=2000, default=500, integer=True)
    pairs = []
    for record in dataset_load_records(dataset=dataset):
        turns = [m for m in record["messages"] if m["role"] in ("user", "assistant") and m["content"].strip()]
        if len(turns) >= 2 and turns[-1]["role"] == "assistant" and turns[-2]["role"] == "user":
            pairs.append((turns[-2]["content"], turns[-1]["content"]))
        if len(pairs) >= limit:
            break
    if not pairs:
        raise bad("dataset_id", f"test split '{dataset.name}' has no record ending in a user turn and its answer")
    scoring = {"similarity": {"weight": 1.0, "threshold": number(body, "threshold", "", lo=0, hi=1, default=0.8)}}
    raw = {"name": body["name"], "description": body.get("description") or f"From the test split of '{dataset.name}'",
           "test_cases": cases_from_pairs(pairs, prefix="case"), "scoring": scoring}
    return raw, dataset


@transaction.atomic
def custom_benchmark_create(*, team: Team, user, body: Any) -> CustomBenchmark:
    """POST /eval/benchmark/custom: the design's custom benchmark (10.3.3), or `dataset_id` to make
    one from a dataset's test split. Every bad item is named with its position, id and field."""
    from evaluation_app.engine.custom import parse_custom_set

    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    source = None
    if "dataset_id" in body:
        body, source = _from_dataset(team=team, user=user, body=body)
    else:
        body = {k: v for k, v in body.items() if k != "team"}
    parsed = parse_custom_set(body)
    row = CustomBenchmark(team=team, created_by=user, name=parsed["name"], description=parsed["description"],
                          test_cases=parsed["test_cases"], scoring=parsed["scoring"], source_dataset=source,
                          sha256=_sha(parsed["test_cases"], parsed["scoring"]))
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError:
        raise NexusError(f"name: team '{team.name}' already has a custom benchmark named '{parsed['name']}'",
                         code="conflict", status_code=409, details={"name": "already exists in this team"}) from None
    return row


@transaction.atomic
def custom_benchmark_delete(*, custom: CustomBenchmark) -> None:
    custom.delete()


# -- what a worker runs ---------------------------------------------------------------------------------


def workload_for(job: BenchmarkJob, config: dict[str, Any]) -> tuple[Workload, dict[str, Any]]:
    """The items (the same for both models), few-shot pool and provenance of one configured benchmark."""
    from evaluation_app.engine.suites import fewshot_pool, select_items

    key = config["benchmark_name"]
    if key.startswith("custom:"):
        custom = CustomBenchmark.objects.filter(pk=int(key.split(":", 1)[1]), team=job.team).first()
        if custom is None:
            raise NexusError(f"The custom benchmark {key} was deleted after this job was created.",
                             code="custom_benchmark_deleted")
        items = select_items(custom.test_cases, config["num_samples"])
        work = Workload(key=key, label=f"Custom: {custom.name}", kind="custom", metric="weighted score",
                        items=items, scoring=custom.scoring, general=False)
        return work, {"source": f"custom benchmark '{custom.name}' (#{custom.pk})", "sha256": custom.sha256,
                      "custom_benchmark_id": custom.pk}
    suite = suite_registry.suite_get(key)
    everything = suite_registry.load_items(suite, data_dir())
    items = select_items(everything, config["num_samples"])
    kind = {"code": "code", "generate": "gsm8k"}.get(suite.kind, "multiple_choice")
    if suite.name == "truthfulqa":
        kind = "truthfulqa"
    fewshot = fewshot_pool(everything, items, config["num_few_shot"]) if config["num_few_shot"] else []
    work = Workload(key=suite.name, label=suite.label, kind=kind, metric=suite.metric, style=suite.style,
                    items=items, fewshot=fewshot, general=True)
    return work, {"source": suite_registry.provenance(suite, data_dir())}


def bench_config(config: dict[str, Any]) -> BenchConfig:
    return BenchConfig(**{k: config[k] for k in BenchConfig.__dataclass_fields__ if k in config})


def _model_fingerprint(folder: str) -> list:
    """Sizes and times of the model folder's files: a re-provisioned model is not the cached one."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted([p.name, p.stat().st_size, int(p.stat().st_mtime)] for p in root.iterdir() if p.is_file())


def base_cache_key(job: BenchmarkJob, config: dict[str, Any], provenance: dict[str, Any]) -> str:
    """Everything that changes the base model's numbers on a benchmark."""
    described = {"base_model": job.base_model_id, "hf_path": job.base_model.hf_path,
                 "files": _model_fingerprint(job.base_model.hf_path), "benchmark": config["benchmark_name"],
                 "data": provenance, "config": bench_config(config).cache_part(), "lm_eval": job.lm_eval_version,
                 "backend": job.backend, "format": PROMPT_FORMAT}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()
