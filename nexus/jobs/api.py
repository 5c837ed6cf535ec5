"""One events API for every kind: GET <thing>/<id>/events?after=<seq>&limit=<n>, the same cursor
and paging everywhere (the websocket resumes with the same `after`)."""
from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.views import APIView

from nexus.api_utils import int_query_param
from nexus.events import job_events_after
from nexus.jobs.kinds import kind_get
from nexus.pagination import CURSOR_PARAMETERS, cursor_page
from nexus.schema import EventPageSerializer

EVENTS_PAGE_MAX = 1000


class _EventsApi(APIView):
    kind = ""

    @extend_schema(parameters=CURSOR_PARAMETERS, responses=EventPageSerializer)
    def get(self, request, **kwargs):
        kind = kind_get(self.kind)
        (pk,) = kwargs.values()
        row = kind.call("loader", user=request.user, pk=pk)  # 404 for outsiders
        limit = int_query_param(request, "limit", EVENTS_PAGE_MAX, lo=1, hi=EVENTS_PAGE_MAX)
        after = int_query_param(request, "after", 0, hi=10**9)
        return cursor_page(request, job_events_after(kind=kind.name, job_id=row.pk, after=after, limit=limit),
                           limit=limit)


def events_api(kind: str) -> type[APIView]:
    """The events view of `kind` (one class per kind, so the schema names each operation)."""
    return type(f"{kind.title().replace('_', '')}EventsApi", (_EventsApi,), {"kind": kind,
                                                                            "__doc__": f"Events of a {kind} row."})
