from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from datasets_app.engine.formats import FORMAT_CHOICES
from datasets_app.selectors import dataset_get, dataset_list
from datasets_app.services import dataset_create
from nexus.errors import NexusError
from nexus.teams import resolve_team, team_ensure_personal, user_teams


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
    team_ensure_personal(user=request.user)  # users made by createsuperuser/admin get theirs here
    form = DatasetUploadForm(request.POST or None, request.FILES or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        team = resolve_team(request.user, form.cleaned_data["team"], write=True)
        try:
            dataset = dataset_create(team=team, user=request.user, name=form.cleaned_data["name"],
                                     file=form.cleaned_data["file"], description=form.cleaned_data["description"],
                                     format=form.cleaned_data["format"])
        except NexusError as exc:
            form.add_error("file", exc.message)
        else:
            return redirect("dataset-detail", dataset_id=dataset.pk)
    return render(request, "datasets/upload.html", {"form": form})


@login_required
def dataset_detail_page(request, dataset_id: int):
    dataset = dataset_get(user=request.user, pk=dataset_id)
    template = "datasets/_status.html" if request.htmx else "datasets/detail.html"
    return render(request, template, {"dataset": dataset, "problems": dataset.validation_errors[:200]})
