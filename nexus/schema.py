"""OpenAPI schema generation (drf-spectacular) for Nexus's APIs."""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema


class NexusAutoSchema(AutoSchema):
    def _is_list_view(self, serializer=None) -> bool:
        """A page of items (`PaginatedXList`) is a list: its operation id ends in `_list`."""
        if serializer is None:
            serializer = self.get_response_serializers()
        name = getattr(serializer, "__name__", type(serializer).__name__)
        return name.startswith("Paginated") or super()._is_list_view(serializer)

    def get_serializer_name(self, serializer, direction: str) -> str:
        """Each API's nested `InputSerializer` is its own component (`JobListCreateInput`), not one
        `Input` that every request body would share."""
        cls = serializer if isinstance(serializer, type) else type(serializer)
        outer, _, inner = cls.__qualname__.rpartition(".")
        if outer and "<locals>" not in outer:
            return outer.split(".")[-1].removesuffix("Api") + inner
        return super().get_serializer_name(serializer, direction)


from drf_spectacular.utils import extend_schema_serializer  # noqa: E402
from rest_framework import serializers  # noqa: E402


@extend_schema_serializer(component_name="JobEvent")
class EventSerializer(serializers.Serializer):
    """One ordered event of a job (dataset processing, training, export, deployment)."""

    seq = serializers.IntegerField()
    type = serializers.ChoiceField(choices=["log", "metric", "status"])
    level = serializers.CharField()
    message = serializers.CharField()
    data = serializers.JSONField()
    created_at = serializers.DateTimeField()


@extend_schema_serializer(component_name="JobEventPage")
class EventPageSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True, help_text="the events after this page's last, while the page was full")
    results = EventSerializer(many=True)

