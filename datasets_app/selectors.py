from __future__ import annotations

from django.db.models import QuerySet

from datasets_app.models import Dataset
from nexus.teams import get_for_user, visible_to


def dataset_list(*, user, team=None) -> QuerySet[Dataset]:
    qs = visible_to(Dataset.objects.select_related("team"), user)
    return qs.filter(team=team) if team is not None else qs


def dataset_get(*, user, pk: int, write: bool = False) -> Dataset:
    return get_for_user(Dataset.objects.select_related("team"), user, pk=pk, write=write)
