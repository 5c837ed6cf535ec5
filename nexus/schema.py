"""OpenAPI schema generation (drf-spectacular) for Nexus's APIs."""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema


class NexusAutoSchema(AutoSchema):
    def get_serializer_name(self, serializer, direction: str) -> str:
        """Each API's nested `InputSerializer` is its own component (`JobListCreateInput`), not one
        `Input` that every request body would share."""
        cls = serializer if isinstance(serializer, type) else type(serializer)
        outer, _, inner = cls.__qualname__.rpartition(".")
        if outer and "<locals>" not in outer:
            return outer.split(".")[-1].removesuffix("Api") + inner
        return super().get_serializer_name(serializer, direction)
