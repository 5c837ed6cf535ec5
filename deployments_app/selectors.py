from __future__ import annotations

from django.db.models import QuerySet

from deployments_app.models import Deployment
from nexus.teams import get_for_user, visible_to


def deployment_list(*, user, team=None) -> QuerySet[Deployment]:
    qs = visible_to(Deployment.objects.select_related("team", "base_model").prefetch_related(
        "arms__adapter", "arms__export__adapter", "arms__deployment__base_model"), user)
    return qs.filter(team=team) if team is not None else qs


def deployment_get(*, user, pk: int, write: bool = False) -> Deployment:
    return get_for_user(Deployment.objects.select_related("team", "base_model").prefetch_related("arms"), user,
                        pk=pk, write=write)
