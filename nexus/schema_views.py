"""The schema and docs views (apart from nexus.schema, which drf-spectacular's views import)."""
from __future__ import annotations


from drf_spectacular.renderers import OpenApiJsonRenderer
from drf_spectacular.views import SpectacularAPIView


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema: YAML by default, JSON for `?format=json` or `Accept: application/json`
    (query-string format overrides are off elsewhere: there `format` names a dataset format)."""

    def perform_content_negotiation(self, request, force=False):
        if request.query_params.get("format") == "json":
            renderer = OpenApiJsonRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)
