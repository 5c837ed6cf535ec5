from __future__ import annotations

import time
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from deployments_app.engine import serving
from deployments_app.models import Deployment, DeploymentArm, DeploymentRequest
from nexus.teams import get_for_user, visible_to


def deployment_list(*, user, team=None) -> QuerySet[Deployment]:
    qs = visible_to(Deployment.objects.select_related("team", "base_model").prefetch_related(
        "arms__adapter", "arms__export__adapter", "arms__deployment__base_model"), user)
    return qs.filter(team=team) if team is not None else qs


def deployment_get(*, user, pk: int, write: bool = False) -> Deployment:
    return get_for_user(Deployment.objects.select_related("team", "base_model").prefetch_related("arms"), user,
                        pk=pk, write=write)


def deployment_arm_stats(*, deployment: Deployment) -> list[dict[str, Any]]:
    """Per arm: requests, errors, tokens and throughput over all recorded requests."""
    totals = {row["arm_id"]: row for row in deployment.requests.values("arm_id").annotate(
        requests=Count("id"), errors=Count("id", filter=~Q(status_code=200)), prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"), latency_ms=Sum("latency_ms"))}
    out = []
    for arm in deployment.arms.all():
        row = totals.get(arm.pk, {})
        completion, latency = row.get("completion_tokens") or 0, row.get("latency_ms") or 0
        out.append({"arm": arm, "requests": row.get("requests", 0), "errors": row.get("errors", 0),
                    "prompt_tokens": row.get("prompt_tokens") or 0, "completion_tokens": completion,
                    "tokens_per_s": round(completion / (latency / 1000), 1) if latency else None})
    return out


def deployment_recent_requests(*, deployment: Deployment, limit: int = 20) -> list[DeploymentRequest]:
    return list(deployment.requests.select_related("arm", "user")[:limit])


def deployment_health(*, deployment: Deployment) -> list[dict[str, Any]]:
    """Per arm: does its server answer /v1/models over the network (as the proxy reaches it), and
    how fast; `alive` is what its host last found of the process (`checked_at`). A read: nothing
    is written."""
    out = []
    for arm in deployment.arms.all():
        started = time.perf_counter()
        answer = serving.health(arm.host, arm.port, timeout=2.0, api_key=arm.api_key) if arm.port and arm.pid else None
        out.append({"label": arm.label, "alive": bool(arm.pid), "healthy": answer is not None,
                    "latency_ms": int((time.perf_counter() - started) * 1000) if answer is not None else None,
                    "healthy_at": arm.healthy_at, "checked_at": arm.checked_at})
    return out


def deployment_log_tail(*, arm: DeploymentArm, lines: int = 80) -> str:
    """The end of the arm's server log as its host last read it (`checked_at`)."""
    return "\n".join(arm.log_tail.splitlines()[-lines:])
