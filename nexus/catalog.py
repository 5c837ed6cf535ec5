"""The base-model catalog: registering models from a local HF folder or a GGUF file."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from nexus.errors import NexusError
from nexus.modelfiles import context_length, has_chat_template, hf_config, parameter_count, read_gguf
from nexus.models import BaseModel


def _inspect_hf_folder(folder: Path) -> dict[str, Any]:
    if not (folder / "config.json").is_file():
        raise NexusError(f"{folder} is not a Hugging Face model folder: config.json is missing", code="invalid_model")
    config = hf_config(folder)
    return {
        "architecture": (config.get("architectures") or [config.get("model_type", "")])[0],
        "context_length": context_length(config),
        "has_chat_template": has_chat_template(folder),
        "parameter_count": parameter_count(folder),
    }


def _inspect_gguf(path: Path) -> dict[str, Any]:
    info = read_gguf(path)
    return {
        "architecture": info.architecture,
        "context_length": info.context_length,
        "has_chat_template": "tokenizer.chat_template" in info.fields,
        "parameter_count": info.parameter_count,
    }


@transaction.atomic
def base_model_register(*, name: str, hf_path: str | Path | None = None, gguf_path: str | Path | None = None,
                        source: str = "", team=None) -> BaseModel:
    """Create or update a catalog entry from a local HF folder and/or a GGUF file (idempotent)."""
    if not hf_path and not gguf_path:
        raise NexusError("Give a local HF folder, a GGUF file, or both.", code="invalid_model")
    info: dict[str, Any] = {}
    if gguf_path:
        gguf_path = Path(gguf_path).resolve()
        if not gguf_path.is_file():
            raise NexusError(f"GGUF file not found: {gguf_path}", code="invalid_model")
        info.update(_inspect_gguf(gguf_path))
    if hf_path:
        hf_path = Path(hf_path).resolve()
        if not hf_path.is_dir():
            raise NexusError(f"Model folder not found: {hf_path}", code="invalid_model")
        info.update(_inspect_hf_folder(hf_path))
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults={
            **info,
            "hf_path": str(hf_path or ""),
            "gguf_path": str(gguf_path or ""),
            "source": source,
            "team": team,
        },
    )
    model.full_clean()
    return model


def base_model_default() -> BaseModel | None:
    """The model whose tokenizer counts dataset tokens when the user names none: the first trainable one."""
    return BaseModel.objects.exclude(hf_path="").order_by("created_at").first()


def base_models_visible(user) -> QuerySet[BaseModel]:
    """The operator's models and the user's teams' own (merged) models."""
    from django.db.models import Q

    from nexus.teams import user_teams

    return BaseModel.objects.filter(Q(team__isnull=True) | Q(team__in=user_teams(user)))


def base_model_lookup(*, user, value: Any, team=None) -> BaseModel:
    """A model by id or name among those the user may use (and, given a team, that team may use);
    a 400 naming the available ones otherwise."""
    from django.db.models import Q

    visible = base_models_visible(user)
    if team is not None:
        visible = visible.filter(Q(team__isnull=True) | Q(team=team))
    if isinstance(value, BaseModel):
        value = value.pk
    text = str(value or "")
    lookup = {"pk": int(text)} if re.fullmatch(r"[0-9]{1,18}", text) else {"name": text[:200]}
    model = visible.filter(**lookup).first()
    if model is None:
        names = ", ".join(visible.values_list("name", flat=True)) or "none registered"
        raise NexusError(f"base_model: unknown model '{value}' (available: {names})", code="validation_error",
                         details={"base_model": f"unknown model '{value}'"})
    return model
