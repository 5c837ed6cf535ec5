"""Optional language check of records (py3langid: its model ships inside the package). Django-free."""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str) -> tuple[str, float]:
    lang, prob = _identifier().classify(text[:2000])
    return lang, float(prob)


def language_problem(messages: list[dict], allowed: list[str], min_confidence: float = 0.9) -> str | None:
    """A reason when the conversation is confidently in a language outside `allowed`."""
    text = "\n".join(m["content"] for m in messages if m["role"] in ("user", "assistant"))
    if len(text.split()) < 3:
        return None  # too short to tell
    lang, prob = detect_language(text)
    if lang not in allowed and prob >= min_confidence:
        return f"looks like '{lang}' (confidence {prob:.2f}), expected {', '.join(allowed)}"
    return None
