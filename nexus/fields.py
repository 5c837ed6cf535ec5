"""Checking a JSON request body down to the field: every refusal names the field's path
(`teacher_config.base_url`, `sampling_params.temperature`) in its message and in `details`."""
from __future__ import annotations

from typing import Any

from nexus.errors import NexusError


def bad(path: str, problem: str, *, code: str = "validation_error", status: int = 400) -> NexusError:
    return NexusError(f"{path}: {problem}", code=code, details={path: problem}, status_code=status)


def require(raw: dict, fields: list[str], path: str = "") -> None:
    """Every missing required field at once, each named in the details."""
    missing = [f for f in fields if raw.get(f) in (None, "", [], {})]
    if missing:
        where = f"{path}." if path else ""
        raise NexusError(f"{where}{missing[0]}: is required" + (f" (also missing: {', '.join(missing[1:])})"
                                                                 if missing[1:] else ""),
                         code="validation_error", details={f"{where}{f}": "is required" for f in missing})


def number(raw: dict, key: str, path: str, *, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise bad(f"{path}.{key}" if path else key, f"must be {'an integer' if integer else 'a number'} from {lo:g} to "
                                                   f"{hi:g}, got {value!r}")
    if not lo <= value <= hi:
        raise bad(f"{path}.{key}" if path else key, f"must be from {lo:g} to {hi:g}, got {value!r}")
    return int(value) if integer else float(value)


def text(raw: dict, key: str, path: str, *, max_len: int = 100_000, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        return default
    return string(value, f"{path}.{key}" if path else key, max_len=max_len)


def string(value: Any, path: str, *, max_len: int = 100_000) -> str:
    """`value` at `path` as a string Postgres can store, of at most `max_len` characters."""
    if not isinstance(value, str):
        raise bad(path, f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise bad(path, "must not contain NUL characters")
    if len(value) > max_len:
        raise bad(path, f"is {len(value):,} characters long; at most {max_len:,}")
    return value


def unknown(raw: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        where = f"{path}." if path else ""
        raise bad(f"{where}{extra[0]}", f"unknown field (known: {', '.join(sorted(allowed))})")
