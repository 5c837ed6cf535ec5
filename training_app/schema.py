"""The job config sections as OpenAPI components: the design's names (section 5.3) with their
defaults and descriptions, built from the engine's field declarations. Parsing stays the engine's
(`parse_job_config`), which also takes the aliases and names the field in every error."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from training_app.engine.config import field_specs

_COMPONENTS = {"lora_config": "LoRAConfig", "training_config": "TrainingConfig", "qlora_config": "QLoRAConfig"}


def _schema_field(spec: dict) -> serializers.Field:
    kind = spec["kind"].rstrip("?")
    help_text = spec["help"]
    if spec["aliases"]:
        help_text += f" Also accepted as: {', '.join(spec['aliases'])}."
    if spec["design"]:
        help_text += " (Design section 5.3.)"
    common = {"required": False, "default": spec["default"], "help_text": help_text,
              "allow_null": spec["kind"].endswith("?")}
    if kind == "int":
        return serializers.IntegerField(**common)
    if kind == "float":
        return serializers.FloatField(**common)
    if kind == "bool":
        return serializers.BooleanField(**common)
    if kind == "str" and spec["choices"]:
        return serializers.ChoiceField(choices=list(spec["choices"]), **common)
    if kind == "str":
        return serializers.CharField(**common)
    return serializers.JSONField(**common)  # target_modules: a list of names or "all-linear"


def _component(section: str) -> type[serializers.Serializer]:
    attrs = {spec["name"]: _schema_field(spec) for spec in field_specs(section)}
    return type(_COMPONENTS[section], (serializers.Serializer,), attrs)


LoRAConfigSchema = _component("lora_config")
TrainingConfigSchema = _component("training_config")
QLoRAConfigSchema = _component("qlora_config")


@extend_schema_field(LoRAConfigSchema)
class LoRAConfigField(serializers.JSONField):
    """lora_config as given; the service parses it (aliases, errors naming the field)."""


@extend_schema_field(TrainingConfigSchema)
class TrainingConfigField(serializers.JSONField):
    """training_config as given."""


@extend_schema_field(QLoRAConfigSchema)
class QLoRAConfigField(serializers.JSONField):
    """qlora_config as given."""

