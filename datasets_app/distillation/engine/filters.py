"""Quality filters of teacher answers: refusals, cut-offs, too short, wrong language, and
duplicates (exact, near, and echoes of prompts). Django-free.

`answer_problem` judges one answer on its own. `DuplicateIndex` judges it against the answers
kept so far; it is incremental and deterministic, so the runner feeds it in item order and can
rebuild it on resume by add()-ing the kept answers again. Near duplicates reuse the dataset
dedup's shingles, MinHash and LSH parameters (datasets_app/engine/dedup.py) so that "near
duplicate" means the same thing in a distillation job and in a dataset report.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from datasets_app.engine.dedup import (DEFAULT_NUM_PERM, DEFAULT_SHINGLE, DEFAULT_THRESHOLD, MAX_BUCKET, lsh_params,
                                       minhash_signatures, normalize, shingle_hashes)

from .modes import split_reasoning
from .types import Answer

_A = "['\u2019]"  # straight or curly apostrophe: teachers write both
DEFAULT_REFUSALS: tuple[str, ...] = (
    rf"I{_A}?m sorry,? (?:but )?I (?:can{_A}?t|cannot|won{_A}?t|am unable|am not able)",
    rf"I am sorry,? (?:but )?I (?:can{_A}?t|cannot|won{_A}?t|am unable|am not able)",
    rf"(?:Sorry|I apologi[sz]e),? (?:but )?I (?:can{_A}?t|cannot|won{_A}?t|am unable|am not able)",
    r"I cannot (?:help|assist|provide|comply|fulfil|create|write|generate|do that)",
    rf"I can{_A}?t (?:help|assist|provide|comply|fulfil|do that)",
    rf"As an AI(?: language model| assistant)?,? I (?:cannot|can{_A}?t|am unable|am not able|do not|don{_A}?t)",
    rf"I won{_A}?t be able to",
    rf"I(?: am|{_A}m) unable to",
    rf"I(?: am|{_A}m) not able to (?:help|assist|provide|comply)",
    rf"I don{_A}?t feel comfortable",
    r"I do not feel comfortable",
    rf"I(?: am|{_A}m) not comfortable",
    r"I (?:must|have to|will have to) (?:respectfully |politely )?decline",
)
# A refusal pattern counts anywhere in an answer this short ("Unfortunately, I cannot help with
# that."); in a longer one only at the start, where a refusal begins: further in it is usually
# quoted text or a polite aside inside a real answer.
SHORT_ANSWER_WORDS = 40
MIN_LANGUAGE_WORDS = 5

REASONS: dict[str, str] = {
    "empty": "Empty answer",
    "refusal": "The teacher refused",
    "cut_off": "Cut off at the token limit",
    "too_short": "Too short",
    "language": "Not in the prompt's language",
    "duplicate": "Duplicate of a kept answer",
    "near_duplicate": "Near duplicate of a kept answer",
    "echo": "Repeats a prompt",
    "judge": "Judge score below the threshold",
    "judge_error": "The judge gave no usable score",
    "teacher_error": "The teacher call failed",
    "not_best": "Another teacher's answer was kept",
    "manual": "Rejected by a person",
    "malformed": "The teacher's answer did not have the asked-for shape",
}


@dataclass
class QualityConfig:
    min_words: int = 3
    check_language: bool = True
    language_min_confidence: float = 0.9
    near_threshold: float = DEFAULT_THRESHOLD
    shingle_size: int = DEFAULT_SHINGLE
    refusal_patterns: tuple[str, ...] = DEFAULT_REFUSALS
    num_perm: int = DEFAULT_NUM_PERM


@dataclass
class Rejection:
    reason: str  # a key of REASONS
    detail: str


# CJK scripts do not separate words with spaces: each character counts as a word there.
_WORDS = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\s\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.DOTALL)


def word_count(text: str) -> int:
    return len(_WORDS.findall(text))


@functools.lru_cache(maxsize=16)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


_LEAD = re.compile(r"^[\s\"'\u201c\u2018*_>#-]*")  # quotes and markdown before the first word


def _refusal(text: str, patterns: tuple[str, ...]) -> str | None:
    """The refusal phrase the answer starts with (or holds, when short), else None."""
    start = _LEAD.sub("", text)
    short = word_count(text) <= SHORT_ANSWER_WORDS
    for pattern in _compiled(patterns):
        match = pattern.match(start) or (pattern.search(text) if short else None)
        if match:
            return match.string[match.start():match.start() + 80].split("\n")[0]
    return None


def _language_text(text: str) -> str:
    # Code says nothing about the language of the prose around it and fools the detector.
    return _CODE.sub(" ", text)


def _language_problem(prompt: str, answer: str, config: QualityConfig) -> Rejection | None:
    from datasets_app.engine.language import detect_language

    prompt, answer = _language_text(prompt), _language_text(answer)
    if word_count(prompt) < MIN_LANGUAGE_WORDS or word_count(answer) < MIN_LANGUAGE_WORDS:
        return None  # too short to tell
    prompt_lang, prompt_p = detect_language(prompt)
    if prompt_p < config.language_min_confidence:
        return None
    answer_lang, answer_p = detect_language(answer)
    if answer_p < config.language_min_confidence or answer_lang == prompt_lang:
        return None
    return Rejection("language", f"the prompt is '{prompt_lang}', the answer '{answer_lang}' ({answer_p:.2f})")


def answer_problem(prompt: str, answer: Answer, config: QualityConfig) -> Rejection | None:
    """Why the answer is not usable on its own, or None. Reasoning in tags (<think>...) is looked
    past: a refusal after thinking is a refusal; words of the reasoning count towards length."""
    flagged = answer.finish_reason in ("refusal", "content_filter") or bool(answer.refusal)
    _, final = split_reasoning(answer.text)
    if not final.strip() and not flagged:
        if answer.finish_reason == "length":
            return Rejection("empty", f"no answer: stopped at max_tokens ({answer.tokens_out} tokens) before answering")
        return Rejection("empty", "the teacher returned no text")
    # A provider's own refusal comes with an empty text: "refusal" says more than "empty".
    if flagged:
        if answer.refusal:
            return Rejection("refusal", f"the teacher refused: {answer.refusal[:200]}")
        if answer.finish_reason == "content_filter":
            return Rejection("refusal", "the provider's content filter stopped the answer")
        return Rejection("refusal", "the provider marked the answer as a refusal")
    phrase = _refusal(final.strip(), config.refusal_patterns)
    if phrase:
        return Rejection("refusal", f"the answer refuses: '{phrase}'")
    if answer.finish_reason == "length":
        return Rejection("cut_off", f"stopped at max_tokens ({answer.tokens_out} tokens)")
    words = word_count(split_reasoning(answer.text)[0]) + word_count(final)
    if words < config.min_words:
        return Rejection("too_short", f"{words} word{'s' if words != 1 else ''}, fewer than the minimum of {config.min_words}")
    if config.check_language:
        return _language_problem(prompt, final, config)
    return None


@dataclass
class _Entry:
    kind: str  # "answer" | "prompt"
    key: int | None
    shingles: frozenset[int]


class DuplicateIndex:
    """Kept answers and prompts, to tell whether a new answer repeats one of them.

    Exact: the same normalize()d text. Near: MinHash LSH (the dedup module's signatures and
    band/row choice for the threshold) proposes candidates; each is verified with the true
    Jaccard similarity of the shingle sets, so a match never rests on a hash collision and the
    answer is the same on every run. Checking and adding 10k answers of ~100 words takes 3-4.5 s on one core
    (measured in tests/datasets_app/distillation/test_engine_quality.py)."""

    def __init__(self, config: QualityConfig | None = None):
        self.config = config or QualityConfig()
        self._bands, self._rows = lsh_params(self.config.near_threshold, self.config.num_perm)
        self._answers: dict[str, int] = {}  # normalized text -> item key (the first kept)
        self._prompts: dict[str, int | None] = {}  # normalized text -> item key, if known
        self._entries: list[_Entry] = []
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self._bands)]
        # The runner add()s an answer right after check()ing it: the second hashing is saved.
        self._last: tuple[str, tuple[frozenset[int], list[bytes]]] | None = None

    def __len__(self) -> int:
        return len(self._answers)

    def _shingles_and_keys(self, normalized: str) -> tuple[frozenset[int], list[bytes]]:
        if self._last is not None and self._last[0] == normalized:
            return self._last[1]
        hashes, starts = shingle_hashes([normalized], self.config.shingle_size)
        sig = minhash_signatures(hashes, starts, self.config.num_perm, seed=1)[0]
        rows = self._rows
        keys = [sig[b * rows:(b + 1) * rows].tobytes() for b in range(self._bands)]
        result = frozenset(np.unique(hashes).tolist()), keys
        self._last = (normalized, result)
        return result

    def _register(self, kind: str, exact: dict, key: int | None, text: str) -> None:
        normalized = normalize(text)
        if not normalized or normalized in exact:
            return  # the first one keeps the key: details name the earliest item
        exact[normalized] = key
        shingles, band_keys = self._shingles_and_keys(normalized)
        index = len(self._entries)
        self._entries.append(_Entry(kind, key, shingles))
        for bucket, band_key in zip(self._buckets, band_keys):
            members = bucket.setdefault(band_key, [])
            if len(members) < MAX_BUCKET:  # a bucket this full already holds look-alikes to match against
                members.append(index)

    def add_prompt(self, text: str, key: int | None = None) -> None:
        """Registers a prompt: answers that repeat it are echoes. `key`: its item, for details."""
        self._register("prompt", self._prompts, key, text)

    def add(self, key: int, text: str) -> None:
        """Registers a kept answer of item `key`."""
        self._register("answer", self._answers, key, text)

    def check(self, text: str) -> Rejection | None:
        """Whether `text` repeats a kept answer or a prompt, exactly or nearly."""
        normalized = normalize(text)
        if not normalized:
            return None  # nothing to compare: answer_problem rejects empty answers
        if normalized in self._answers:
            return Rejection("duplicate", f"same text as item #{self._answers[normalized]}")
        if normalized in self._prompts:
            return Rejection("echo", f"repeats {self._prompt_name(self._prompts[normalized])}")
        shingles, keys = self._shingles_and_keys(normalized)
        candidates: set[int] = set()
        for bucket, key in zip(self._buckets, keys):
            candidates.update(bucket.get(key, ()))
        best: tuple[float, int] | None = None
        for index in sorted(candidates):  # sorted: ties go to the earliest entry, on every run
            other = self._entries[index].shingles
            inter = len(shingles & other)
            similarity = inter / (len(shingles) + len(other) - inter)
            if similarity >= self.config.near_threshold and (best is None or similarity > best[0]):
                best = (similarity, index)
        if best is None:
            return None
        similarity, index = best
        entry = self._entries[index]
        if entry.kind == "answer":
            return Rejection("near_duplicate", f"near duplicate of item #{entry.key} (similarity {similarity:.2f})")
        return Rejection("echo", f"repeats {self._prompt_name(entry.key)} (similarity {similarity:.2f})")

    @staticmethod
    def _prompt_name(key: int | None) -> str:
        return f"the prompt of item #{key}" if key is not None else "a prompt"
