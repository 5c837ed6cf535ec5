from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from datasets_app.engine.formats import FORMAT_CHOICES, FORMATS
from datasets_app.engine.readers import FILE_TYPES
from datasets_app.models import Dataset
from datasets_app.selectors import (
    dataset_get,
    dataset_list,
    dataset_preview,
    dataset_progress,
    dataset_training_estimate,
)
from datasets_app.services import (
    dataset_contamination,
    dataset_create,
    dataset_dedup_apply,
    dataset_delete,
    dataset_revalidate,
    dataset_split,
)
from nexus.catalog import base_models_visible
from nexus.errors import NexusError
from nexus.teams import resolve_team, user_teams

PREVIEW_PAGE = 10


class DatasetUploadForm(forms.Form):
    name = forms.CharField(max_length=200, required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    format = forms.ChoiceField(choices=[(f, f) for f in FORMAT_CHOICES], initial="auto")
    team = forms.ChoiceField(choices=())
    file = forms.FileField()

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = [(t.pk, t.name) for t in user_teams(user)]


@login_required
def dataset_list_page(request):
    return render(request, "datasets/list.html", {"datasets": dataset_list(user=request.user)})


@login_required
def dataset_upload_page(request):
    form = DatasetUploadForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        team = resolve_team(request.user, form.cleaned_data["team"], write=True)
        try:
            dataset = dataset_create(team=team, user=request.user, name=form.cleaned_data["name"],
                                     file=form.cleaned_data["file"], description=form.cleaned_data["description"],
                                     format=form.cleaned_data["format"])
        except NexusError as exc:
            form.add_error("file", exc.message)
            status = exc.status_code
        else:
            return redirect("dataset-detail", dataset_id=dataset.pk)
    else:
        status = 400 if form.errors else 200
    return render(request, "datasets/upload.html", {"form": form}, status=status)


def _group_problems(problems: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for p in problems:
        groups.setdefault(p.get("category", "other"), []).append(p)
    return [{"category": k, "count": len(v), "problems": v[:100]} for k, v in sorted(groups.items())]


def _problem_groups(dataset: Dataset) -> list[dict]:
    groups = _group_problems(dataset.validation_errors)
    totals = dataset.statistics.get("invalid_by_category", {})  # the stored list is capped; counts are not
    for g in groups:
        g["count"] = totals.get(g["category"], g["count"])
    return groups


@login_required
def dataset_detail_page(request, dataset_id: int):
    dataset = dataset_get(user=request.user, pk=dataset_id)
    ctx = {"dataset": dataset, "progress": dataset_progress(dataset=dataset),
           "problem_groups": _problem_groups(dataset)}
    if request.htmx:
        return render(request, "datasets/_status.html", ctx)
    ctx.update({
        "estimate": dataset_training_estimate(dataset=dataset) if dataset.status == Dataset.Status.READY else None,
        "preview": dataset_preview(dataset=dataset, limit=PREVIEW_PAGE) if dataset.status == Dataset.Status.READY else None,
        "splits": dataset.splits.order_by("created_at"),
        "other_datasets": dataset_list(user=request.user).filter(status=Dataset.Status.READY).exclude(pk=dataset.pk),
        "models": base_models_visible(request.user).exclude(hf_path=""),
        "formats": FORMATS,
        "file_types": FILE_TYPES,
    })
    return render(request, "datasets/detail.html", ctx)


@login_required
def dataset_preview_page(request, dataset_id: int):
    dataset = dataset_get(user=request.user, pk=dataset_id)
    try:
        offset = max(0, int(request.GET.get("offset", 0)))
    except ValueError:
        offset = 0
    ctx = {"dataset": dataset, "preview": dataset_preview(dataset=dataset, offset=offset, limit=PREVIEW_PAGE)}
    return render(request, "datasets/_preview.html" if request.htmx else "datasets/preview.html", ctx)


@require_POST
@login_required
def dataset_action_page(request, dataset_id: int, action: str):
    from django.contrib import messages

    dataset = dataset_get(user=request.user, pk=dataset_id, write=True)
    try:
        if action == "remove-duplicates":
            dataset_dedup_apply(dataset=dataset, user=request.user, action="remove", kinds=request.POST.getlist("kinds") or None)
        elif action == "restore-duplicates":
            dataset_dedup_apply(dataset=dataset, user=request.user, action="restore")
        elif action == "split":
            splits = dataset_split(dataset=dataset, user=request.user, seed=int(request.POST.get("seed") or 42))
            messages.success(request, "Created " + ", ".join(f"{s.split} ({s.num_examples})" for s in splits))
        elif action == "validate":
            model = base_models_visible(request.user).filter(pk=request.POST.get("base_model") or 0).first()
            max_tokens = int(request.POST["max_tokens"]) if request.POST.get("max_tokens") else None
            dataset_revalidate(dataset=dataset, base_model=model, max_tokens=max_tokens)
        elif action == "contamination":
            against = dataset_get(user=request.user, pk=int(request.POST.get("against") or 0))
            report = dataset_contamination(dataset=dataset, against=against)
            messages.info(request, f"Contamination against '{against.name}': {report['contaminated_records']} record(s) "
                                   f"({report['fraction']:.1%}) — {len(report['exact'])} exact, {len(report['near'])} near, "
                                   f"{len(report['same_prompt'])} same-prompt matches.")
        elif action == "delete":
            dataset_delete(dataset=dataset)
            messages.success(request, f"Deleted dataset '{dataset.name}' and its files.")
            return redirect("dataset-list")
        else:
            return HttpResponse(status=404)
    except (NexusError, ValueError) as exc:
        messages.error(request, getattr(exc, "message", str(exc)))
    return redirect("dataset-detail", dataset_id=dataset.pk)
