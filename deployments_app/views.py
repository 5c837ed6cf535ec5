"""Deployment pages: list (with a deploy form), detail (status, arms, health, log, requests), chat."""
from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adapters_app.models import AdapterExport
from adapters_app.selectors import adapter_get, adapter_list, export_get
from deployments_app.proxy import deployment_public_path
from deployments_app.selectors import (
    deployment_arm_stats,
    deployment_get,
    deployment_health,
    deployment_list,
    deployment_log_tail,
    deployment_recent_requests,
)
from deployments_app.services import ArmInput, deployment_create, deployment_start, deployment_stop
from nexus.catalog import base_model_lookup, base_models_visible
from nexus.errors import NexusError
from nexus.teams import resolve_team


@login_required
def deployment_list_page(request):
    deployments = deployment_list(user=request.user)
    return render(request, "deployments/list.html", {
        "deployments": deployments, "adapters": adapter_list(user=request.user),
        "merged_exports": AdapterExport.objects.filter(
            adapter__in=adapter_list(user=request.user), kind=AdapterExport.Kind.MODEL_GGUF,
            status=AdapterExport.Status.COMPLETED).select_related("adapter", "adapter__base_model"),
        "base_models": base_models_visible(request.user).exclude(gguf_path=""),
    })


def _arm_from_form(request, value: str, weight: int) -> ArmInput:
    """'' or 'base': the base model alone; '<id>': base + that adapter; 'export:<id>': a merged GGUF.
    Loaded for writing: deploying spends the team's compute, which a viewer may not (403)."""
    if value.startswith("export:") and value[7:].isdecimal():
        return ArmInput(weight=weight, export=export_get(user=request.user, pk=int(value[7:]), write=True))
    return ArmInput(weight=weight, adapter=adapter_get(user=request.user, pk=int(value), write=True)
                    if value.isdecimal() else None)


@require_POST
@login_required
def deployment_new_page(request):
    """The list page's form: arm A (base or an adapter), optionally arm B with the rest of the traffic."""
    post = request.POST
    try:
        weight = int(post.get("weight_a") or 100)
        arm_b = post.get("arm_b", "")
        arms = [_arm_from_form(request, post.get("arm_a", ""), weight if arm_b else 100)]
        if arm_b:
            arms.append(_arm_from_form(request, arm_b, 100 - weight))
        first = next((a.adapter or a.export.adapter for a in arms if a.adapter or a.export), None)
        team = resolve_team(request.user, first.team_id if first else post.get("team"), write=True)
        base = first.base_model if first else base_model_lookup(user=request.user, value=post.get("base_model"))
        deployment = deployment_create(team=team, user=request.user, name=post.get("name", ""), base_model=base,
                                       arms=arms)
    except (NexusError, ValueError) as exc:
        messages.error(request, getattr(exc, "message", None) or f"weight_a: {exc}")
        return redirect("deployment-list")
    return redirect("deployment-detail", deployment_id=deployment.pk)


def _status_context(deployment, control_error: str | None = None) -> dict:
    health = {h["label"]: h for h in deployment_health(deployment=deployment)} if deployment.is_live else {}
    arms = [{**s, "health": health.get(s["arm"].label), "log": deployment_log_tail(arm=s["arm"], lines=30)}
            for s in deployment_arm_stats(deployment=deployment)]
    return {"deployment": deployment, "arms": arms, "control_error": control_error,
            "requests": deployment_recent_requests(deployment=deployment, limit=15)}


@login_required
def deployment_detail_page(request, deployment_id: int):
    deployment = deployment_get(user=request.user, pk=deployment_id)
    ctx = _status_context(deployment)
    if request.htmx:
        return render(request, "deployments/_status.html", ctx)
    ctx["endpoint"] = request.build_absolute_uri(deployment_public_path(deployment=deployment))
    return render(request, "deployments/detail.html", ctx)


@require_POST
@login_required
def deployment_start_page(request, deployment_id: int):
    return _control(request, deployment_id, deployment_start)


@require_POST
@login_required
def deployment_stop_page(request, deployment_id: int):
    return _control(request, deployment_id, deployment_stop)


def _control(request, deployment_id: int, action):  # noqa: ANN001
    """Start or stop; htmx gets the status partial back, a plain form a redirect."""
    deployment = deployment_get(user=request.user, pk=deployment_id, write=True)
    error = None
    try:
        deployment = action(deployment=deployment)
    except NexusError as exc:
        error = exc.message
    if request.htmx:
        return render(request, "deployments/_status.html", _status_context(deployment, control_error=error))
    if error:
        messages.error(request, error)
    return redirect("deployment-detail", deployment_id=deployment_id)


@login_required
def deployment_chat_page(request, deployment_id: int):
    deployment = deployment_get(user=request.user, pk=deployment_id)
    return render(request, "deployments/chat.html", {
        "deployment": deployment, "endpoint": deployment_public_path(deployment=deployment) + "/chat/completions",
    })
