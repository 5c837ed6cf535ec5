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
                        source: str = "", team=None, upload: bool = False, stored_as: str = "") -> BaseModel:
    """Create or update a catalog entry from a local HF folder and/or a GGUF file (idempotent).

    The paths are of this host. `upload` copies them into the object store (when artifacts live in
    one) so that every worker host stages them into its cache; `stored_as` says the HF folder is
    already stored under that name (a merged adapter). Otherwise every host must have the paths."""
    from nexus.storage import is_remote, stage_down

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
    hf_name, gguf_name = str(hf_path or ""), str(gguf_path or "")
    remote = is_remote()
    if stored_as:
        hf_name = stored_as if remote else str(stage_down(stored_as))  # on one machine: the stored folder's path
    elif upload and remote:
        hf_name, gguf_name = _upload(name, hf_path, gguf_path)
    model, _ = BaseModel.objects.update_or_create(
        name=name,
        defaults={**info, "hf_path": hf_name, "gguf_path": gguf_name, "source": source, "team": team},
    )
    model.full_clean()
    return model


def _upload(name: str, hf_path: Path | None, gguf_path: Path | None) -> tuple[str, str]:
    """Copy a model's files into the store under a new folder (no host keeps a stale copy of a
    name), unless the entry already points at stored copies with the same files and sizes."""
    import uuid

    from nexus.storage import folder_manifest, name_slug, same_files, stage_up, storage_save_file, stored_size

    old = BaseModel.objects.filter(name=name).values("hf_path", "gguf_path").first() or {}
    keep_hf = hf_path and old.get("hf_path") and not Path(old["hf_path"]).is_absolute() and same_files(
        folder_manifest(old["hf_path"]), hf_path)
    keep_gguf = gguf_path and old.get("gguf_path") and not Path(old["gguf_path"]).is_absolute() and stored_size(
        old["gguf_path"]) == gguf_path.stat().st_size
    folder = f"models/{name_slug(name)}-{uuid.uuid4().hex[:8]}"
    hf_name = old["hf_path"] if keep_hf else stage_up(hf_path, f"{folder}/hf") if hf_path else ""
    gguf_name = old["gguf_path"] if keep_gguf else storage_save_file(f"{folder}/{gguf_path.name}", gguf_path) if gguf_path else ""
    return hf_name, gguf_name


def hf_meta(model: BaseModel) -> str:
    """The model's HF folder on this host without its weights (config, tokenizer, tensor shapes)."""
    from nexus.storage import model_folder

    return str(model_folder(model.hf_path, weights=False))


def hf_weights(model: BaseModel) -> str:
    """The model's HF folder on this host with its weights (staged into this host's cache when stored)."""
    from nexus.storage import model_folder

    return str(model_folder(model.hf_path))


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
