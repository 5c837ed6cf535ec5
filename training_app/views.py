from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from datasets_app.models import Dataset
from datasets_app.selectors import dataset_list
from nexus.errors import NexusError
from nexus.models import BaseModel
from nexus.teams import resolve_team
from training_app.engine.config import LoRAConfig, TrainingConfig
from training_app.selectors import (
    training_job_checkpoints,
    training_job_events,
    training_job_get,
    training_job_list,
    training_job_curves,
    training_job_metrics,
)
from training_app.services import (
    training_job_cancel,
    training_job_create,
    training_job_pause,
    training_job_request_checkpoint,
    training_job_resume,
)

_LORA, _TRAIN = LoRAConfig(), TrainingConfig()


class JobForm(forms.Form):
    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    base_model = forms.ModelChoiceField(queryset=BaseModel.objects.exclude(hf_path=""), empty_label=None)
    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    r = forms.IntegerField(label="LoRA rank (r)", initial=_LORA.r)
    lora_alpha = forms.IntegerField(initial=_LORA.lora_alpha)
    lora_dropout = forms.FloatField(initial=_LORA.lora_dropout)
    num_epochs = forms.FloatField(initial=_TRAIN.num_epochs)
    max_steps = forms.IntegerField(initial=_TRAIN.max_steps, help_text="-1 trains for num_epochs")
    batch_size = forms.IntegerField(initial=_TRAIN.batch_size)
    gradient_accumulation_steps = forms.IntegerField(initial=_TRAIN.gradient_accumulation_steps)
    learning_rate = forms.FloatField(initial=_TRAIN.learning_rate)
    max_seq_length = forms.IntegerField(initial=_TRAIN.max_seq_length)
    qlora = forms.BooleanField(label="QLoRA (4-bit NF4)", required=False)

    LORA_FIELDS = ("r", "lora_alpha", "lora_dropout")
    TRAIN_FIELDS = ("num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "max_seq_length")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["dataset"].queryset = dataset_list(user=user).filter(status=Dataset.Status.READY)


@login_required
def job_list_page(request):
    return render(request, "training/list.html", {"jobs": training_job_list(user=request.user)})


@login_required
def job_new_page(request):
    form = JobForm(request.POST or None, user=request.user, initial={"dataset": request.GET.get("dataset")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        dataset = data["dataset"]
        team = resolve_team(request.user, dataset.team_id, write=True)
        try:
            job = training_job_create(
                team=team, user=request.user, name=data["name"], description=data["description"],
                base_model=data["base_model"], dataset_id=dataset.pk,
                lora_config={k: data[k] for k in JobForm.LORA_FIELDS},
                training_config={k: data[k] for k in JobForm.TRAIN_FIELDS},
                qlora_config={"enabled": data["qlora"]},
            )
        except NexusError as exc:
            for key, message in (exc.details or {}).items() if isinstance(exc.details, dict) else []:
                field = key.split(".")[-1]
                form.add_error(field if field in form.fields else None, message)
            if not form.errors:
                form.add_error(None, exc.message)
        else:
            return redirect("job-detail", job_id=job.pk)
    return render(request, "training/new.html", {"form": form})


@login_required
def job_detail_page(request, job_id: int):
    job = training_job_get(user=request.user, pk=job_id)
    eta = training_job_metrics(job=job)["eta_seconds"]
    if request.htmx:
        return render(request, "training/_summary.html", {"job": job, "eta": eta})
    events = training_job_events(job=job)
    return render(request, "training/detail.html", {
        "job": job,
        "checkpoints": training_job_checkpoints(job=job),
        "eta": eta,
        "events": events,
        "last_seq": events[-1].seq if events else 0,
        "curves": training_job_curves(job=job),
    })


@login_required
def job_checkpoints_partial(request, job_id: int):
    job = training_job_get(user=request.user, pk=job_id)
    return render(request, "training/_checkpoints.html", {"job": job, "checkpoints": training_job_checkpoints(job=job)})


@require_POST
@login_required
def job_cancel_page(request, job_id: int):
    return _control(request, job_id, training_job_cancel)


@require_POST
@login_required
def job_pause_page(request, job_id: int):
    return _control(request, job_id, training_job_pause)


@require_POST
@login_required
def job_resume_page(request, job_id: int):
    return _control(request, job_id, training_job_resume)


@require_POST
@login_required
def job_checkpoint_page(request, job_id: int):
    return _control(request, job_id, training_job_request_checkpoint)


def _control(request, job_id: int, action):  # noqa: ANN001
    """Stop, pause, resume or checkpoint; htmx gets the summary back, a plain form a redirect."""
    from django.contrib import messages

    job = training_job_get(user=request.user, pk=job_id, write=True)
    error = None
    try:
        job = action(job=job)
    except NexusError as exc:
        error = exc.message
    if request.htmx:
        return render(request, "training/_summary.html",
                      {"job": job, "eta": training_job_metrics(job=job)["eta_seconds"], "control_error": error})
    if error:
        messages.error(request, error)
    return redirect("job-detail", job_id=job_id)


@login_required
def job_log_export_page(request, job_id: int):
    from django.http import HttpResponse

    job = training_job_get(user=request.user, pk=job_id)
    lines = [f"{e.created_at:%Y-%m-%d %H:%M:%S} #{e.seq} {e.level.upper():7} {e.message}" for e in training_job_events(job=job)]
    response = HttpResponse("\n".join(lines) + "\n", content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-log.txt"'
    return response


@require_POST
@login_required
def job_checkpoint_adapter_page(request, job_id: int, step: int):
    from django.contrib import messages

    from training_app.services import training_job_checkpoint_to_adapter

    job = training_job_get(user=request.user, pk=job_id, write=True)
    try:
        adapter = training_job_checkpoint_to_adapter(job=job, step=step)
    except NexusError as exc:
        messages.error(request, exc.message)
        return redirect("job-detail", job_id=job_id)
    return redirect("adapter-detail", adapter_id=adapter.pk)
