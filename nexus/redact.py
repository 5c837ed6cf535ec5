"""What users may see of the server: no NUL characters (Postgres refuses them in text and JSON),
no absolute server paths, no raw exception text or tracebacks. Those go to the server's log, under
a reference the user can quote."""
from __future__ import annotations

import logging
import re
import uuid
from typing import Any, Callable

log = logging.getLogger("nexus.errors")

# absolute paths under the usual roots of a server (not URL paths such as /api/v1/...)
_PATH = re.compile(r"(?<![\w.:/~-])/(?:usr|opt|root|home|tmp|var|work|srv|mnt|proc|etc|lib|lib64|data|app|private)"
                   r"(?:/[^\s'\"`:,;()<>\[\]{}]*)+")


def public_text(text: str) -> str:
    """`text` as a user may see it: NUL shown as ␀, every absolute server path as …/<its last name>."""
    text = text.replace("\x00", "\u2400")
    return _PATH.sub(lambda m: "…/" + (m.group(0).rstrip("/").rsplit("/", 1)[-1] or ""), text)


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    """JSON with `fn` applied to every string in it, keys too."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {_map_strings(k, fn): _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


def public_data(value: Any) -> Any:
    """JSON to store and show: every string (keys too) through public_text."""
    return _map_strings(value, public_text)


def jsonb_safe(value: Any) -> Any:
    """JSON that Postgres can store: NUL characters (valid in user data) shown as ␀, nothing else changed."""
    return _map_strings(value, lambda text: text.replace("\x00", "\u2400"))


_MEMORY = ("out of memory", "Cannot allocate memory")
_OURS = ("training_app", "datasets_app", "adapters_app", "evaluation_app", "nexus")


def public_error(exc: BaseException, *, what: str) -> str:
    """A clear sentence for a failure of `what` ("Training", "Processing", ...), the exception with
    its traceback logged on the server under a reference that the sentence gives."""
    from nexus.errors import NexusError

    reference = uuid.uuid4().hex[:10]
    log.error("%s failed (reference %s)", what, reference, exc_info=exc)
    if isinstance(exc, NexusError):
        return public_text(exc.message)
    text = str(exc)
    if isinstance(exc, MemoryError) or any(m in text for m in _MEMORY):
        return (f"{what} ran out of memory. Lower batch_size or max_seq_length, or turn on QLoRA or "
                f"gradient_checkpointing (reference {reference}).")
    if _origin(exc).split(".")[0] in _OURS:  # raised by our own code, with a message written for users
        return f"{what} failed: {public_text(text)} (reference {reference})"
    return (f"{what} failed with an unexpected {type(exc).__name__}; the details are in the server's log under "
            f"reference {reference}.")


def _origin(exc: BaseException) -> str:
    """The module whose code raised `exc` (the last frame of its traceback)."""
    tb = exc.__traceback__
    while tb and tb.tb_next:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "") if tb else ""
