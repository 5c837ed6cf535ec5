from __future__ import annotations

import re

from rest_framework.request import Request

from nexus.errors import NexusError

from nexus.models import Team
from nexus.teams import resolve_team


def json_body(request: Request) -> dict:
    """The request's JSON object (a list or a scalar body is a 400 that says so)."""
    if not isinstance(request.data, dict):
        raise NexusError("body: must be a JSON object", code="validation_error", details={"body": "not an object"})
    return dict(request.data)


def request_team(request: Request, *, write: bool) -> Team:
    """The team an API call acts in: `team` (id or slug) from the body or query, else the personal team."""
    team = None
    if hasattr(request, "data") and hasattr(request.data, "get"):
        team = request.data.get("team")
    team = team or request.query_params.get("team")
    return resolve_team(request.user, team, write=write)


def request_team_filter(request: Request) -> Team | None:
    """For list endpoints: only filter by team when one is named; otherwise all the user's teams."""
    if request.query_params.get("team"):
        return resolve_team(request.user, request.query_params["team"], write=False)
    return None


def int_query_param(request: Request, name: str, default: int, *, lo: int = 0, hi: int = 10_000) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw) or not lo <= int(raw) <= hi:
        raise NexusError(f"{name}: must be an integer from {lo} to {hi}, got {raw!r}", code="validation_error",
                         details={name: raw})
    return int(raw)
