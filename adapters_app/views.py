"""Adapter pages: the browser (cards grouped by name), the detail page with lineage, exports (with
live progress) and deployments, the export dialog, downloads and delete."""
from __future__ import annotations

from itertools import groupby
from typing import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import reswap, retarget, trigger_client_event

from adapters_app.downloads import adapter_download_response, export_download_response
from adapters_app.engine.gguf import QUANTIZATIONS
from adapters_app.exports import export_create
from adapters_app.models import AdapterExport, LoRAAdapter
from adapters_app.selectors import adapter_get, adapter_list, export_get, export_list
from adapters_app.services import adapter_delete
from deployments_app.models import DeploymentArm
from nexus.errors import NexusError

# The dialog's choices, in the order an engineer usually wants them.
EXPORT_CHOICES = (
    (AdapterExport.Kind.ADAPTER_GGUF, "LoRA adapter GGUF",
     "A small file for llama.cpp's --lora, applied on top of the base model's GGUF."),
    (AdapterExport.Kind.MODEL_GGUF, "Merged model GGUF",
     "The adapter merged into the base weights, one GGUF file that llama.cpp serves alone."),
    (AdapterExport.Kind.MERGE, "Merge into a new model (safetensors)",
     "A new model in your team's catalog that can be trained further, exported and deployed."),
)


def _groups(adapters) -> list[dict]:
    """Adapters grouped by (team, name), newest version first; groups by their latest version's date."""
    rows = sorted(adapters, key=lambda a: (a.team_id, a.name, -a.version))
    groups = []
    for (_, name), items in groupby(rows, key=lambda a: (a.team_id, a.name)):
        versions = list(items)
        groups.append({"name": name, "team": versions[0].team, "versions": versions})
    return sorted(groups, key=lambda g: max(a.created_at for a in g["versions"]), reverse=True)


@login_required
def adapter_list_page(request):
    query = request.GET.get("q", "").strip()
    adapters = adapter_list(user=request.user)
    total = adapters.count()
    if query:
        adapters = adapters.filter(name__icontains=query)
    return render(request, "adapters/list.html", {"groups": _groups(adapters), "query": query, "total": total})


def _target_modules(lora_config: dict) -> str:
    modules = lora_config.get("target_modules")
    if not modules:
        return "the architecture's default"
    return modules if isinstance(modules, str) else ", ".join(modules)


def _detail_context(request, adapter: LoRAAdapter, **extra) -> dict:
    # arms serving the adapter on top of the base model, or one of its merged GGUF exports
    arms = (DeploymentArm.objects.filter(Q(adapter=adapter) | Q(export__adapter=adapter))
            .select_related("deployment", "export").order_by("-deployment__created_at", "label"))
    return {
        "adapter": adapter,
        "versions": adapter_list(user=request.user).filter(team=adapter.team, name=adapter.name).order_by("version"),
        "target_modules": _target_modules(adapter.lora_config),
        "exports": export_list(adapter=adapter),
        "arms": arms,
        "export_choices": EXPORT_CHOICES,
        "quantizations": QUANTIZATIONS,
        "export_form": {"kind": AdapterExport.Kind.ADAPTER_GGUF, "quantization": "q4_k_m"},
        "dialog_open": request.GET.get("export") == "1",
        **extra,
    }


@login_required
def adapter_detail_page(request, adapter_id: int):
    adapter = adapter_get(user=request.user, pk=adapter_id)
    return render(request, "adapters/detail.html", _detail_context(request, adapter))


def _download(request, adapter_id: int, respond: Callable[[], HttpResponse]) -> HttpResponse:
    """The file, or back to the adapter's page saying why not (files lost, export not finished)."""
    try:
        return respond()
    except NexusError as exc:
        messages.error(request, exc.message)
        return redirect("adapter-detail", adapter_id=adapter_id)


@login_required
def adapter_download_page(request, adapter_id: int):
    adapter = adapter_get(user=request.user, pk=adapter_id)
    return _download(request, adapter.pk, lambda: adapter_download_response(adapter=adapter))


@require_POST
@login_required
def adapter_delete_page(request, adapter_id: int):
    adapter = adapter_get(user=request.user, pk=adapter_id, write=True)
    label = str(adapter)
    try:
        adapter_delete(adapter=adapter)
    except NexusError as exc:
        messages.error(request, exc.message)
        return redirect("adapter-detail", adapter_id=adapter_id)
    messages.success(request, f"Deleted adapter '{label}' and its exports.")
    return redirect("adapter-list")


@require_http_methods(["GET", "POST"])
@login_required
def adapter_exports_partial(request, adapter_id: int):
    """GET: the exports table (reloaded when an export finishes). POST: start an export from the
    dialog; htmx gets the table with the new row, or the dialog's form with the service's message."""
    write = request.method == "POST"
    adapter = adapter_get(user=request.user, pk=adapter_id, write=write)
    if not write:
        return render(request, "adapters/_exports.html", {"adapter": adapter, "exports": export_list(adapter=adapter)})
    # a disabled quantization select (any kind but the merged GGUF) is not sent: keep the dialog's default
    form = {"kind": request.POST.get("kind", ""), "quantization": request.POST.get("quantization", "")}
    try:
        export = export_create(adapter=adapter, user=request.user, kind=form["kind"], quantization=form["quantization"])
    except NexusError as exc:
        shown = {**form, "quantization": form["quantization"] or "q4_k_m"}
        ctx = _detail_context(request, adapter, export_form=shown, export_error=exc.message, dialog_open=True)
        if request.htmx:
            return reswap(retarget(render(request, "adapters/_export_form.html", ctx), "#export-form"), "outerHTML")
        return render(request, "adapters/detail.html", ctx, status=exc.status_code)
    if request.htmx:
        response = render(request, "adapters/_exports.html", {"adapter": adapter, "exports": export_list(adapter=adapter)})
        return trigger_client_event(response, "nexus:export-created", {"id": export.pk})
    messages.success(request, f"{export} queued; its progress shows below.")
    return redirect("adapter-detail", adapter_id=adapter_id)


@login_required
def export_download_page(request, export_id: int):
    export = export_get(user=request.user, pk=export_id)
    return _download(request, export.adapter_id, lambda: export_download_response(export=export))
