"""Every list the API returns is a page: `{"count", "next", "previous", "results"}`, with
`limit` (default 50, at most 500) and `offset`; event streams page by cursor (`after`)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter
from psycopg.adapt import Loader
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


_SENTINEL_USER, _SENTINEL_TEAM = -7_000_001, -7_000_002


class ValuesList:
    """A list whose items are plain columns, read the fast way: its queryset is built by
    `build(user, team)` (the selector, the one definition of what is listed) and compiled to SQL
    once per process; each request runs that SQL with the user's and team's ids, one query for the
    page and its count (a window function), rows straight into dicts (no model instances, no
    serializer, no compiler). `mapping` is output name -> queryset lookup; datetimes and JSON are
    written as DRF writes them. The list's serializer still documents it, and a test checks that
    both give the same items."""

    def __init__(self, build: Callable[..., QuerySet], mapping: dict[str, str]):
        self.build, self.mapping = build, mapping
        self._compiled: dict[bool, tuple[str, list, list[int], list[int], list[Callable]]] = {}

    def _compile(self, with_team: bool) -> tuple[str, list, list[int], list[int], list[Callable]]:
        from django.contrib.auth import get_user_model
        from django.db.models import Count, JSONField, Window
        from django.db.models.fields import DateTimeField

        from nexus.models import Team

        if with_team not in self._compiled:
            qs = self.build(user=get_user_model()(pk=_SENTINEL_USER), team=Team(pk=_SENTINEL_TEAM) if with_team else None)
            qs = qs.annotate(page_total=Window(Count("pk"))).values(*self.mapping.values(), "page_total")
            sql, params = qs.query.sql_with_params()
            params = list(params)
            users = [i for i, v in enumerate(params) if v == _SENTINEL_USER]
            teams = [i for i, v in enumerate(params) if v == _SENTINEL_TEAM]
            compiler = qs.query.get_compiler(using=qs.db)
            compiler.setup_query()
            fields = [col.output_field for col, _, _ in compiler.select]
            convert = [_to_json if isinstance(f, JSONField) else _to_datetime if isinstance(f, DateTimeField) else None
                       for f in fields]
            if len(users) != 1 or len(teams) != int(with_team) or len(convert) != len(self.mapping) + 1:
                raise RuntimeError(f"cannot compile the list of {qs.model.__name__}: the user or team is not a parameter")
            self._compiled[with_team] = (sql, params, users, teams, convert)
        return self._compiled[with_team]

    def page(self, request: Request, *, team=None) -> Response:  # noqa: ANN001
        from django.db import connection
        from django.utils import timezone

        limit, offset = page_bounds(request)
        sql, params, users, teams, convert = self._compile(team is not None)
        params = list(params)
        for i in users:
            params[i] = request.user.pk
        for i in teams:
            params[i] = team.pk
        with connection.cursor() as cursor:
            if str(timezone.get_current_timezone()) == "UTC":  # Postgres writes them as DRF would, nearly
                cursor.cursor.adapters.register_loader("timestamptz", _UtcIsoLoader)
            cursor.execute(f"{sql} LIMIT %s OFFSET %s", [*params, limit, offset])
            rows = cursor.fetchall()
        if rows:
            count = rows[0][-1]
        else:
            count = self.build(user=request.user, team=team).count() if offset else 0
        names, tz = list(self.mapping), timezone.get_current_timezone()
        results = [{name: value if fn is None or value is None else fn(value, tz)
                    for name, value, fn in zip(names, row, convert)} for row in rows]
        return _page(request, count=count, limit=limit, offset=offset, results=results)


def _to_json(value: Any, tz: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _to_datetime(value: Any, tz: Any) -> str:
    """As DRF's DateTimeField writes it (ISO 8601 in the current time zone, UTC as Z), without its
    per-value time zone lookups."""
    if isinstance(value, str):
        return value  # already written by _UtcIsoLoader
    text = value.astimezone(tz).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


class _UtcIsoLoader(Loader):
    """timestamptz straight from Postgres's text (the connection's time zone is UTC under USE_TZ)
    to DRF's form, '2026-11-30 15:40:24.8+00' -> '2026-11-30T15:40:24.800000Z', without building a
    datetime only to format it again."""

    def load(self, data: Any) -> str:
        text = bytes(data).decode()
        if not text.endswith("+00"):  # another offset after all: the general path
            from datetime import datetime, timezone as tz

            return _to_datetime(datetime.fromisoformat(text), tz.utc)
        stamp, _, fraction = text[:-3].partition(".")
        return f"{stamp.replace(' ', 'T')}{'.' + fraction.ljust(6, '0') if fraction else ''}Z"


class OffsetPageSerializer(serializers.Serializer):
    """The fields of a selector's page (`with_links`); subclasses add `results`."""

    count = serializers.IntegerField()
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
