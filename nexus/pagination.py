"""Every list the API returns is a page: `{"count", "next", "previous", "results"}`, with
`limit` (default 50, at most 500) and `offset`; event streams page by cursor (`after`)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from nexus.api_utils import int_query_param

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description=f"items per page (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})"),
    OpenApiParameter("offset", int, description="items to skip"),
]
CURSOR_PARAMETERS = [
    OpenApiParameter("after", int, description="only events with a seq greater than this (the cursor)"),
    OpenApiParameter("limit", int, description="events per page (default 1000, at most 1000)"),
]


def page_bounds(request: Request, *, default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> tuple[int, int]:
    return (int_query_param(request, "limit", default, lo=1, hi=most), int_query_param(request, "offset", 0, hi=10**9))


def _links(request: Request, *, count: int, limit: int, offset: int) -> dict[str, str | None]:
    """`next` and `previous` of a page of `limit` items from `offset` in a list of `count`."""
    url = replace_query_param(request.build_absolute_uri(), "limit", limit)
    following = replace_query_param(url, "offset", offset + limit) if offset + limit < count else None
    if offset <= 0:
        previous = None
    elif offset - limit <= 0:
        previous = remove_query_param(url, "offset")
    else:
        previous = replace_query_param(url, "offset", offset - limit)
    return {"next": following, "previous": previous}


def _page(request: Request, *, count: int, limit: int, offset: int, results: list) -> Response:
    return Response({"count": count, **_links(request, count=count, limit=limit, offset=offset), "results": results})


def paginate(request: Request, items: QuerySet | Sequence, serialize: Callable[[Iterable], Any], *,
             default: int = DEFAULT_LIMIT, most: int = MAX_LIMIT) -> Response:
    """One page of `items` (counted in the database for a queryset) with links to its neighbours."""
    limit, offset = page_bounds(request, default=default, most=most)
    count = items.count() if isinstance(items, QuerySet) else len(items)
    return _page(request, count=count, limit=limit, offset=offset, results=serialize(items[offset:offset + limit]))


def cursor_page(request: Request, events: list, *, limit: int) -> Response:
    """A page of ordered events: `next` continues after the last one while the page was full."""
    following = None
    if len(events) >= limit and events:
        url = request.build_absolute_uri()
        following = replace_query_param(replace_query_param(url, "after", events[-1].seq), "limit", limit)
    return Response({"next": following, "results": [e.as_message() for e in events]})


_PAGES: dict[str, type] = {}


def paginated(serializer: type[serializers.Serializer], name: str | None = None) -> type[serializers.Serializer]:
    """The schema of a page of `serializer` items (for extend_schema)."""
    from drf_spectacular.utils import extend_schema_serializer

    component = name or getattr(serializer, "_spectacular_annotation", {}).get("component_name") or \
        serializer.__name__.removesuffix("Serializer").removesuffix("Output")
    key = f"Paginated{component}List"
    if key not in _PAGES:
        attrs = {
            "count": serializers.IntegerField(help_text="items in the whole list"),
            "next": serializers.URLField(allow_null=True, help_text="the next page, or null"),
            "previous": serializers.URLField(allow_null=True, help_text="the previous page, or null"),
            "results": serializer(many=True),
        }
        _PAGES[key] = extend_schema_serializer(component_name=key)(type(key, (serializers.Serializer,), attrs))
    return _PAGES[key]


def with_links(request: Request, body: dict, *, listed: int | None = None) -> dict:
    """A selector's `{count, offset, limit, results}` page with `next` and `previous` links
    (`listed`: how many items can be paged, when `count` says more exist than are kept)."""
    body.update(_links(request, count=body["count"] if listed is None else listed, limit=body["limit"],
                       offset=body["offset"]))
    return body


_DATETIME = serializers.DateTimeField()


def paginate_values(request: Request, items: QuerySet, mapping: dict[str, str]) -> Response:
    """A page of a list whose items are plain columns: one query for the page and its count (a
    window function), rows read as values (no model instances, no serializer). `mapping` is output
    name -> queryset lookup; datetimes are written as DRF writes them. The list's serializer still
    documents it, and a test checks both give the same items."""
    from datetime import datetime

    from django.db.models import Count, Window

    limit, offset = page_bounds(request)
    rows = list(items.annotate(page_total=Window(Count("pk"))).values(*mapping.values(), "page_total")
                [offset:offset + limit])
    count = rows[0]["page_total"] if rows else (items.count() if offset else 0)
    results = [{name: _DATETIME.to_representation(row[lookup]) if isinstance(row[lookup], datetime) else row[lookup]
                for name, lookup in mapping.items()} for row in rows]
    return _page(request, count=count, limit=limit, offset=offset, results=results)


class OffsetPageSerializer(serializers.Serializer):
    """The fields of a selector's page (`with_links`); subclasses add `results`."""

    count = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
