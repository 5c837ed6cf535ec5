from __future__ import annotations

from django.db.models import QuerySet

from adapters_app.models import AdapterExport, LoRAAdapter
from nexus.teams import get_for_user, visible_to


def adapter_list(*, user, team=None) -> QuerySet[LoRAAdapter]:
    qs = visible_to(LoRAAdapter.objects.select_related("team", "base_model", "job"), user)
    return qs.filter(team=team) if team is not None else qs


def adapter_get(*, user, pk: int, write: bool = False) -> LoRAAdapter:
    return get_for_user(LoRAAdapter.objects.select_related("team", "base_model", "job"), user, pk=pk, write=write)


def export_get(*, user, pk: int, write: bool = False) -> AdapterExport:
    return get_for_user(AdapterExport.objects.select_related("team", "adapter", "adapter__base_model"), user, pk=pk,
                        write=write)


def export_list(*, adapter: LoRAAdapter) -> QuerySet[AdapterExport]:
    return adapter.exports.all()
