"""Benchmarks through lm-evaluation-harness, offline: every suite becomes a generated YAML task over
local JSONL files (`dataset_path: json` with `data_files`), run with `lm_eval.simple_evaluate` on
an LM object that is loaded once per model and reused for every task of a job.

Why the `hf` backend for log-likelihoods: against llama-cpp-python's OpenAI-compatible server
(lm-eval's `gguf` / `local-completions` types) the echoed prompt log-probabilities are shifted by
one token and the completion token is missing, so multiple-choice numbers come out wrong without
any error. `self_check` scores a few known items through the backend and through our own
transformers forward pass (`reference_loglikelihoods`, written here independently of lm-eval) and
refuses a backend that disagrees, whatever backend it is.

Django-free: paths and dicts in, dicts out."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# GSM8K as lm-eval's own gsm8k.yaml scores it: "#### N" strictly, the last number flexibly.
GSM8K_FILTERS = [
    {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                                        {"function": "take_first"}]},
    {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1,
                                             "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                                            {"function": "take_first"}]},
]
GSM8K_METRIC = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                "ignore_punctuation": False, "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}
STOP_DEFAULT = ["</s>", "<|im_end|>", "<|endoftext|>"]
CODE_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"]


class BackendDisagrees(RuntimeError):
    """The backend's log-likelihoods do not match the reference computation: its numbers are not shown."""


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


def offline_environment() -> None:
    """lm-eval and datasets must never reach a hub: every task reads local files."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[key] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# -- documents and task files ---------------------------------------------------------------------------


def mc_query(item: dict, style: str) -> tuple[str, list[str]]:
    """The prompt and the continuations scored for one multiple-choice item. `letters`: the question
    with lettered choices, continuations " A", " B"... (MMLU's format); `continuation`: "Question: ...
    Answer:" then each choice's own text (ARC, TruthfulQA); `plain`: the text goes on with each choice
    (HellaSwag's context and endings, Winogrande's sentence)."""
    question = str(item["question"]).strip()
    choices = [str(c) for c in item["choices"]]
    if style == "letters":
        lines = [question] + [f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)]
        return "\n".join(lines) + "\nAnswer:", list(LETTERS[:len(choices)])
    if style == "plain":
        return question, [c.strip() for c in choices]
    return f"Question: {question}\nAnswer:", [c.strip() for c in choices]


def mc_documents(items: Iterable[dict], style: str) -> list[dict]:
    docs = []
    for item in items:
        query, options = mc_query(item, style)
        docs.append({"id": item["id"], "category": item.get("category", ""), "query": query, "options": options,
                     "gold": int(item["answer"])})
    return docs


@dataclass
class TaskSpec:
    """One generated lm-eval task: its YAML (kept for provenance) and its local data files."""

    name: str
    output_type: str
    config: dict[str, Any]
    folder: Path

    @property
    def yaml_text(self) -> str:
        return (self.folder / f"{self.name}.yaml").read_text()


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_task(folder: Path, name: str, *, output_type: str, docs: list[dict], fewshot: list[dict],
               doc_to_text: str, doc_to_target: str, doc_to_choice: str | None = None,
               metric_list: list[dict] | None = None, generation_kwargs: dict | None = None,
               filter_list: list[dict] | None = None, description: str = "", target_delimiter: str = " ",
               repeats: int = 1) -> TaskSpec:
    """Write `<folder>/<name>.yaml` plus its test and few-shot JSONL files. The YAML is plain data
    (no `!function`), so `lm_eval --include_path <folder> --tasks <name>` runs the same task."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    test_file, shot_file = folder / f"{name}.test.jsonl", folder / f"{name}.fewshot.jsonl"
    _write_jsonl(test_file, docs)
    _write_jsonl(shot_file, fewshot or docs[:1])  # an empty split would not load; unused at 0 shots
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(test_file), "fewshot": str(shot_file)}},
        "test_split": "test",
        "fewshot_split": "fewshot",
        "fewshot_config": {"sampler": "first_n"},
        "output_type": output_type,
        "doc_to_text": doc_to_text,
        "doc_to_target": doc_to_target,
        "target_delimiter": target_delimiter,
        "metric_list": metric_list or [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "repeats": repeats,
        "metadata": {"version": 1.0},
    }
    if description:
        config["description"] = description
    if doc_to_choice is not None:
        config["doc_to_choice"] = doc_to_choice
    if generation_kwargs is not None:
        config["generation_kwargs"] = generation_kwargs
    if filter_list is not None:
        config["filter_list"] = filter_list
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return TaskSpec(name=name, output_type=output_type, config=config, folder=folder)


def mc_task(folder: Path, name: str, items: list[dict], fewshot_items: list[dict], *, style: str,
            description: str = "") -> TaskSpec:
    metrics = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
               {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
    return write_task(folder, name, output_type="multiple_choice", docs=mc_documents(items, style),
                      fewshot=mc_documents(fewshot_items, style), doc_to_text="{{query}}",
                      doc_to_target="{{gold}}", doc_to_choice="{{options}}", metric_list=metrics,
                      description=description)


def generation_kwargs(*, max_tokens: int, temperature: float, until: Sequence[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"until": list(until), "max_gen_toks": int(max_tokens)}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature))
    else:
        kwargs.update(do_sample=False, temperature=0.0)
    return kwargs


def gsm8k_task(folder: Path, name: str, items: list[dict], fewshot_items: list[dict], *, reasoning: bool,
               max_tokens: int, temperature: float) -> TaskSpec:
    """Without reasoning the shots answer "#### N" at once; with it they show the worked solution
    and the question is followed by "Let's think step by step." Both score lm-eval's way."""

    def doc(item: dict) -> dict:
        target = item["solution"] if reasoning else f"#### {item['answer']}"
        return {"id": item["id"], "category": item.get("category", ""), "question": item["question"],
                "target": target, "answer": item["answer"]}

    prompt = "Question: {{question}}\nAnswer:" + (" Let's think step by step." if reasoning else "")
    return write_task(folder, name, output_type="generate_until", docs=[doc(i) for i in items],
                      fewshot=[doc(i) for i in fewshot_items], doc_to_text=prompt, doc_to_target="{{target}}",
                      metric_list=[GSM8K_METRIC], filter_list=GSM8K_FILTERS,
                      generation_kwargs=generation_kwargs(max_tokens=max_tokens, temperature=temperature,
                                                          until=["Question:", *STOP_DEFAULT]))


def generate_task(folder: Path, name: str, docs: list[dict], *, max_tokens: int, temperature: float,
                  until: Sequence[str], repeats: int = 1) -> TaskSpec:
    """Generation only (HumanEval, custom prompts): lm-eval generates, the caller scores
    (`predict_only`), so no metric of lm-eval's is reported for these."""
    return write_task(folder, name, output_type="generate_until", docs=docs, fewshot=[], doc_to_text="{{query}}",
                      doc_to_target="{{reference}}", target_delimiter="",
                      metric_list=[{"metric": "bypass", "aggregation": "bypass", "higher_is_better": True}],
                      generation_kwargs=generation_kwargs(max_tokens=max_tokens, temperature=temperature,
                                                          until=until), repeats=repeats)


# -- backends -------------------------------------------------------------------------------------------


def load_hf(pretrained: str, *, peft: str | None = None, batch_size: int = 8, device: str | None = None,
            max_length: int | None = None):
    """lm-eval's `hf` LM on a local model folder (plus a PEFT adapter folder), loaded once."""
    offline_environment()
    import torch
    from lm_eval.models.huggingface import HFLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"pretrained": pretrained, "device": device, "batch_size": batch_size,
                              "dtype": "float32" if device == "cpu" else "auto", "trust_remote_code": False}
    if peft:
        kwargs["peft"] = peft
    if max_length:
        kwargs["max_length"] = max_length
    return HFLM(**kwargs)


def watch(lm, *, should_stop: Callable[[], bool] | None = None, on_batch: Callable[[int], None] | None = None):
    """Make a loaded HF LM stoppable between batches: lm-eval calls `_model_call` (log-likelihoods)
    and `_model_generate` (generation) once a batch, so a cancel is honoured within one batch, not
    at the end of a benchmark that may take hours. `on_batch(n)` hears the running batch count."""
    counter = {"n": 0}
    for name in ("_model_call", "_model_generate"):
        inner = getattr(type(lm), name, None)
        if inner is None:
            continue

        def wrapped(*args, _inner=inner, **kwargs):
            if should_stop and should_stop():
                raise InterruptedError("stopped")
            out = _inner(lm, *args, **kwargs)
            counter["n"] += 1
            if on_batch:
                on_batch(counter["n"])
            return out

        setattr(lm, name, wrapped)
    return lm


@dataclass
class TaskRun:
    """What one task gave: lm-eval's aggregate numbers and its per-document samples."""

    name: str
    metrics: dict[str, Any]
    samples: list[dict]
    config: dict[str, Any]
    n_shot: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def run_task(lm, spec: TaskSpec, *, num_fewshot: int, predict_only: bool = False, seed: int = 1234,
             chat_template: bool = False, should_stop: Callable[[], bool] | None = None) -> TaskRun:
    """One generated task through `lm_eval.simple_evaluate` on a loaded LM (prompts through the
    model's chat template when `chat_template`: custom prompts are questions for a chat model)."""
    import time

    offline_environment()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    if should_stop and should_stop():
        raise InterruptedError("stopped")
    manager = TaskManager(include_path=str(spec.folder), include_defaults=False)
    started = time.monotonic()
    out = simple_evaluate(model=lm, tasks=[spec.name], num_fewshot=num_fewshot, task_manager=manager,
                          log_samples=True, predict_only=predict_only, bootstrap_iters=0,
                          apply_chat_template=chat_template, random_seed=seed,
                          numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                          verbosity="WARNING")
    seconds = time.monotonic() - started
    if out is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    metrics = {k: v for k, v in out["results"].get(spec.name, {}).items() if isinstance(v, (int, float, str))}
    return TaskRun(name=spec.name, metrics=metrics, samples=list(out["samples"].get(spec.name, [])),
                   config=out.get("configs", {}).get(spec.name, spec.config),
                   n_shot=int(out.get("n-shot", {}).get(spec.name, num_fewshot) or 0), seconds=seconds)


def mc_item_results(run: TaskRun, *, metric: str) -> dict[str, dict]:
    """Per item (keyed by the test case id): right or wrong by `metric` (acc or acc_norm), the
    choice picked and the log-likelihood of each choice."""
    out: dict[str, dict] = {}
    for sample in run.samples:
        doc = sample["doc"]
        lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in sample["filtered_resps"]]
        if metric == "acc_norm":
            lengths = [max(1, len(o)) for o in doc["options"]]
            ranked = [ll / n for ll, n in zip(lls, lengths)]
        else:
            ranked = lls
        picked = max(range(len(ranked)), key=ranked.__getitem__)
        correct = bool(sample.get(metric, picked == doc["gold"]))
        out[str(doc["id"])] = {"correct": correct, "score": 1.0 if correct else 0.0, "picked": picked,
                               "gold": doc["gold"], "category": doc.get("category", ""),
                               "loglikelihoods": [round(v, 4) for v in lls]}
    return out


def generation_item_results(run: TaskRun, *, filter_name: str | None = None) -> dict[str, dict]:
    """Per item: the generated text(s) and, when lm-eval scored it, its exact_match."""
    out: dict[str, dict] = {}
    for sample in run.samples:
        if filter_name and sample.get("filter") != filter_name:
            continue
        doc = sample["doc"]
        responses = [r[0] if isinstance(r, (list, tuple)) else r for r in sample.get("resps", [])]
        row = out.setdefault(str(doc["id"]), {"category": doc.get("category", ""), "responses": responses})
        if "exact_match" in sample:
            row["correct"] = bool(sample["exact_match"])
            row["score"] = float(sample["exact_match"])
            row["extracted"] = sample["filtered_resps"][0] if sample.get("filtered_resps") else ""
    return out


# -- the self-check -------------------------------------------------------------------------------------

# Known items: a short context with continuations of one and several tokens, and one that starts
# a word. A backend shifted by one token or missing the last token gets these visibly wrong.
PROBES: list[tuple[str, str]] = [
    ("The capital of France is", " Paris"),
    ("The capital of France is", " a small village on the moon"),
    ("Question: What is 2 + 2?\nAnswer:", " 4"),
    ("One, two, three, four,", " five, six"),
]


def reference_loglikelihoods(model_dir: str, pairs: Sequence[tuple[str, str]], *, peft: str | None = None,
                             model=None, tokenizer=None) -> list[float]:
    """Sum of log-probabilities of each continuation given its context, by a plain transformers
    forward pass: the context and context+continuation are tokenized whole and the continuation is
    what the longer one adds (lm-eval's own convention for a context that ends a word)."""
    offline_environment()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, torch_dtype=torch.float32)
        if peft:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, peft)
        model.eval()
    results = []
    for context, continuation in pairs:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
        if whole[:len(ctx)] != ctx:  # tokenization merged across the boundary: score the parts apart
            whole = ctx + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        bos = [tokenizer.bos_token_id] if (not ctx and tokenizer.bos_token_id is not None) else []
        ids = torch.tensor([bos + whole])
        start = len(bos) + len(ctx)
        with torch.inference_mode():
            logits = model(ids).logits[0].float()
        logprobs = torch.log_softmax(logits[start - 1:-1], dim=-1)
        targets = ids[0, start:]
        results.append(float(logprobs.gather(1, targets[:, None]).sum()))
    return results


def backend_loglikelihoods(lm, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """The same numbers asked of an lm-eval LM, the way lm-eval asks during a task."""
    from lm_eval.api.instance import Instance

    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i)
                for i, (c, x) in enumerate(pairs)]
    return [float(r[0]) for r in lm.loglikelihood(requests)]


@dataclass
class SelfCheck:
    ok: bool
    rows: list[dict]
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "message": self.message}


def self_check(backend: Sequence[float], reference: Sequence[float], *, pairs: Sequence[tuple[str, str]] = PROBES,
               tolerance: float = 0.25) -> SelfCheck:
    """Agreement within `tolerance` nats (plus 2% of the value) on every probe. A tokenizer
    mismatch or a one-token shift moves these by several nats; float noise by far less."""
    rows, bad = [], []
    for (context, continuation), got, want in zip(pairs, backend, reference):
        diff = abs(got - want)
        allowed = tolerance + 0.02 * abs(want)
        rows.append({"context": context, "continuation": continuation, "backend": round(got, 4),
                     "reference": round(want, 4), "difference": round(diff, 4), "ok": diff <= allowed})
        if not math.isfinite(got) or diff > allowed:
            bad.append(f"{continuation!r} after {context!r}: backend {got:.3f}, reference {want:.3f}")
    if bad:
        return SelfCheck(False, rows, "The backend's log-likelihoods disagree with the reference computation "
                                      f"({len(bad)} of {len(rows)} probes): " + "; ".join(bad[:3]) +
                         ". Its benchmark numbers are not reported.")
    return SelfCheck(True, rows, f"The backend agrees with the reference on {len(rows)} probes")


def check_backend(lm, *, model_dir: str, peft: str | None = None, reference: Sequence[float] | None = None
                  ) -> SelfCheck:
    """Run the self-check of `lm` against the model it claims to be; raises BackendDisagrees."""
    if reference is None:
        reference = reference_loglikelihoods(model_dir, PROBES, peft=peft)
    result = self_check(backend_loglikelihoods(lm, PROBES), reference)
    if not result.ok:
        raise BackendDisagrees(result.message)
    return result


def clear_folder(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
