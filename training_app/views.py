from __future__ import annotations

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from datasets_app.models import Dataset
from datasets_app.selectors import dataset_get, dataset_list, dataset_preview, dataset_validation_sibling
from nexus.catalog import base_models_visible
from nexus.errors import NexusError
from nexus.models import BaseModel
from nexus.teams import resolve_team
from training_app.engine.config import BIASES, LR_SCHEDULERS, OPTIMIZERS, PACKING, LoRAConfig, QLoRAConfig, TrainingConfig
from training_app.engine.estimate import GIB
from training_app.selectors import (
    preset_list,
    training_job_checkpoints,
    training_job_events,
    training_job_get,
    training_job_list,
    training_job_curves,
    training_job_metrics,
)
from training_app.services import (
    job_config_for_model,
    training_estimate,
    training_job_cancel,
    training_job_create,
    training_job_pause,
    training_job_request_checkpoint,
    training_job_resume,
)

_LORA, _TRAIN, _QLORA = LoRAConfig(), TrainingConfig(), QLoRAConfig()
# service error keys that are not named like the form field they belong to
_FIELD_FOR_KEY = {"dataset_id": "dataset", "eval_dataset_id": "eval_dataset", "qlora_config.enabled": "qlora"}
MEMORY_PARTS = {"weights": "Base weights", "lora_parameters_gradients_optimizer": "LoRA parameters, gradients, optimizer",
                "activations": "Activations", "logits": "Logits", "runtime_overhead": "Runtime overhead",
                "allocator_slack": "Allocator slack (CPU heap)"}


def _short_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}".removesuffix(".0") + unit
    return str(n)


class _BaseModelField(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        return format_html('<strong>{}</strong> <span class="muted">{} parameters · {}-token context</span>',
                           obj.name, _short_count(obj.parameter_count), obj.context_length or "?")


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(v, v) for v in values]


class JobForm(forms.Form):
    """The new-job wizard's fields; each config field is named as in the job's config (the design's names)."""

    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    base_model = _BaseModelField(queryset=BaseModel.objects.exclude(hf_path=""), empty_label=None, widget=forms.RadioSelect)

    dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), empty_label=None)
    eval_dataset = forms.ModelChoiceField(queryset=Dataset.objects.none(), required=False, label="Validation dataset",
                                          empty_label="None")
    validation_split = forms.FloatField(initial=_TRAIN.validation_split,
                                        help_text="fraction of the dataset held out for validation; 0 = none")

    preset = forms.ChoiceField(required=False, help_text="fills the LoRA and training fields; change any of them after")
    rank = forms.IntegerField(initial=_LORA.rank, help_text="LoRA rank (PEFT's r)")
    alpha = forms.IntegerField(initial=_LORA.alpha, help_text="the update is scaled by alpha / rank")
    dropout = forms.FloatField(initial=_LORA.dropout)
    target_modules = forms.CharField(required=False,
                                     help_text="blank: q, k, v, o, gate, up and down projections (the model's own "
                                     "default when it lacks them); or a comma list (q_proj, v_proj), or all-linear")
    bias = forms.ChoiceField(choices=_choices(BIASES), initial=_LORA.bias)
    qlora = forms.BooleanField(label="QLoRA (4-bit NF4, double quantization)", required=False,
                               initial=_QLORA.enabled)

    num_epochs = forms.FloatField(initial=_TRAIN.num_epochs)
    max_steps = forms.IntegerField(initial=_TRAIN.max_steps, required=False, help_text="blank trains for num_epochs")
    batch_size = forms.IntegerField(initial=_TRAIN.batch_size)
    gradient_accumulation_steps = forms.IntegerField(initial=_TRAIN.gradient_accumulation_steps)
    learning_rate = forms.FloatField(initial=_TRAIN.learning_rate)
    lr_scheduler = forms.ChoiceField(choices=_choices(LR_SCHEDULERS), initial=_TRAIN.lr_scheduler)
    warmup_steps = forms.IntegerField(initial=_TRAIN.warmup_steps)
    weight_decay = forms.FloatField(initial=_TRAIN.weight_decay)
    max_seq_length = forms.IntegerField(initial=_TRAIN.max_seq_length)
    optimizer = forms.ChoiceField(choices=_choices(OPTIMIZERS), initial=_TRAIN.optimizer)
    bf16 = forms.BooleanField(required=False, initial=_TRAIN.bf16,
                              help_text="bfloat16 where the GPU has it (float32 on a CPU, said in the job's warnings)")
    fp16 = forms.BooleanField(required=False, initial=_TRAIN.fp16)
    gradient_checkpointing = forms.BooleanField(required=False, initial=_TRAIN.gradient_checkpointing)
    packing = forms.ChoiceField(choices=_choices(PACKING), initial=_TRAIN.packing)
    save_steps = forms.IntegerField(initial=_TRAIN.save_steps, help_text="0: about ten checkpoints per run")
    save_total_limit = forms.IntegerField(initial=_TRAIN.save_total_limit)
    eval_steps = forms.IntegerField(initial=_TRAIN.eval_steps, help_text="0: at every checkpoint")
    early_stopping_patience = forms.IntegerField(initial=_TRAIN.early_stopping_patience, help_text="0: off")
    load_best_model_at_end = forms.BooleanField(required=False, initial=_TRAIN.load_best_model_at_end)

    LORA_FIELDS = ("rank", "alpha", "dropout", "target_modules", "bias")
    TRAIN_FIELDS = ("learning_rate", "batch_size", "gradient_accumulation_steps", "num_epochs", "max_steps",
                    "warmup_steps", "weight_decay", "optimizer", "lr_scheduler", "max_seq_length", "bf16", "fp16",
                    "gradient_checkpointing", "packing", "save_steps", "save_total_limit", "eval_steps",
                    "early_stopping_patience", "load_best_model_at_end", "validation_split")
    CONFIG_FIELDS = (*LORA_FIELDS, *TRAIN_FIELDS, "qlora")
    # the fields a preset sets (validation_split belongs to the dataset step, not to a preset)
    PRESET_FIELDS = tuple(f for f in CONFIG_FIELDS if f != "validation_split")
    STEPS = (
        ("Base model", ("name", "description", "base_model")),
        ("Dataset", ("dataset", "eval_dataset", "validation_split")),
        ("LoRA", ("preset", *LORA_FIELDS, "qlora")),
        ("Training", tuple(f for f in TRAIN_FIELDS if f != "validation_split")),
        ("Review and start", ()),
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.CONFIG_FIELDS:
            if name != "qlora":
                self.fields[name].label = name  # the config's own names, as the API and the review show them
        ready = dataset_list(user=user).filter(status=Dataset.Status.READY)
        self.fields["dataset"].queryset = ready
        self.fields["eval_dataset"].queryset = ready
        self.fields["base_model"].queryset = base_models_visible(user).exclude(hf_path="")
        self.presets = preset_list(user=user)
        self.fields["preset"].choices = [("", "None: the defaults")] + [
            (str(p["id"]), p["name"] if p["builtin"] else f"{p['name']} (team preset)") for p in self.presets]
        if "base_model" not in self.initial:
            self.initial["base_model"] = self.fields["base_model"].queryset.values_list("pk", flat=True).first()

    def clean_target_modules(self) -> list[str] | str | None:
        text = self.cleaned_data["target_modules"].strip()
        if text in ("", "all-linear"):
            return text or None
        return [m.strip() for m in text.split(",") if m.strip()]

    def configs(self) -> dict[str, dict]:
        """The cleaned fields as the service's lora_config / training_config / qlora_config."""
        data = self.cleaned_data
        lora = {k: data[k] for k in self.LORA_FIELDS if data.get(k) is not None}
        return {"lora_config": lora, "training_config": {k: data[k] for k in self.TRAIN_FIELDS if k in data},
                "qlora_config": {"enabled": data.get("qlora", False)}}

    def config_errors(self) -> dict[str, list[str]]:
        return {k: v for k, v in self.errors.items() if k in self.CONFIG_FIELDS}

    def add_service_error(self, exc: NexusError) -> None:
        """Put a service error on the field its details name (`training_config.learning_rate`)."""
        details = exc.details if isinstance(exc.details, dict) else {}
        for key, detail in details.items():
            field = _FIELD_FOR_KEY.get(key, key.split(".")[-1])
            # the message says more than a bare detail value ("processing"); it starts with the key
            message = exc.message.removeprefix(f"{key}: ") if len(details) == 1 and exc.message.startswith(key) else detail
            self.add_error(field if field in self.fields else None, str(message))
        if not self.errors:
            self.add_error(None, exc.message)

    def step_of(self, field: str) -> int:
        return next((n for n, (_, names) in enumerate(self.STEPS, 1) if field in names), len(self.STEPS))

    def first_error_step(self) -> int:
        steps = [self.step_of(f) for f in self.errors if f != "__all__"] or ([len(self.STEPS)] if self.errors else [1])
        return min(steps)

    def steps(self) -> list[dict]:
        return [{"number": n, "title": title, "fields": [self[f] for f in names]}
                for n, (title, names) in enumerate(self.STEPS, 1)]

    def error_list(self) -> list[dict]:
        return [{"step": self.step_of(f), "label": self[f].label if f in self.fields else "", "messages": messages}
                for f, messages in self.errors.items()]


@login_required
def job_list_page(request):
    return render(request, "training/list.html", {"jobs": training_job_list(user=request.user)})


def _initial_dataset(user, value: str | None) -> dict:
    """`?dataset=<id>` from the dataset page (else the first one), with its "val" split as validation data."""
    ready = dataset_list(user=user).filter(status=Dataset.Status.READY)
    dataset = (ready.filter(pk=int(value)).first() if value and value.isdecimal() else None) or ready.first()
    if dataset is None:
        return {}
    sibling = dataset_validation_sibling(user=user, dataset=dataset)
    return {"dataset": dataset.pk, "eval_dataset": sibling.pk if sibling else None}


@login_required
def job_new_page(request):
    form = JobForm(request.POST or None, user=request.user, initial=_initial_dataset(request.user, request.GET.get("dataset")))
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        dataset = data["dataset"]
        team = resolve_team(request.user, dataset.team_id, write=True)
        try:
            job = training_job_create(
                team=team, user=request.user, name=data["name"], description=data["description"],
                base_model=data["base_model"], dataset_id=dataset.pk,
                eval_dataset_id=data["eval_dataset"].pk if data["eval_dataset"] else None, **form.configs(),
            )
        except NexusError as exc:
            form.add_service_error(exc)
        else:
            return redirect("job-detail", job_id=job.pk)
    defaults = {f: form.fields[f].initial if f != "target_modules" else "" for f in JobForm.PRESET_FIELDS}
    return render(request, "training/new.html", {
        "form": form, "defaults": defaults, "other_models": base_models_visible(request.user).filter(hf_path=""),
        "initial_step": form.first_error_step() if form.is_bound else 1,
    })


@login_required
def job_new_preview_partial(request):
    """The wizard's dataset step: the first conversations and the sizes of the chosen dataset."""
    value = request.GET.get("dataset", "")
    if not value.isdecimal():
        raise Http404("No dataset chosen.")
    dataset = dataset_get(user=request.user, pk=int(value))
    ready = dataset.status == Dataset.Status.READY
    return render(request, "training/_dataset_preview.html", {
        "dataset": dataset,
        "preview": dataset_preview(dataset=dataset, offset=0, limit=3) if ready else None,
        "sibling": dataset_validation_sibling(user=request.user, dataset=dataset),
    })


@require_POST
@login_required
def job_new_estimate_partial(request):
    """Memory (on a GPU and on the CPU) and time for the wizard's current values."""
    form = JobForm(request.POST, user=request.user)
    form.is_valid()
    ctx: dict = {"errors": form.config_errors()}
    if not ctx["errors"]:
        dataset = request.POST.get("dataset", "")
        try:
            estimates = [training_estimate(user=request.user, base_model=request.POST.get("base_model", ""),
                                           dataset_id=int(dataset) if dataset.isdecimal() else None, device=device,
                                           **form.configs())
                         for device in ("cuda", "cpu")]
        except NexusError as exc:
            ctx["error"] = exc
        else:
            memories = [e["memory"] for e in estimates]
            ctx.update(bars=_memory_bars(memories), time=estimates[0]["time"], rows=[
                {"key": key, "label": label, "gib": [m["breakdown_bytes"][key] / GIB for m in memories]}
                for key, label in MEMORY_PARTS.items()])
    return render(request, "training/_estimate.html", ctx)


def _memory_bars(memories: list[dict]) -> list[dict]:
    """Each device's breakdown as stacked-bar segments, all on the scale of the largest total."""
    scale = max(m["total_bytes"] for m in memories) or 1
    return [{
        "device": m["device"], "total_gib": m["total_gib"], "quantization": m["quantization"],
        "lora_parameters": _short_count(m["lora_parameters"]), "target_modules": m["target_modules"],
        "parts": [{"key": key, "label": label, "gib": m["breakdown_bytes"][key] / GIB,
                   "percent": 100 * m["breakdown_bytes"][key] / scale} for key, label in MEMORY_PARTS.items()],
    } for m in memories]


def _review_sections(config: dict[str, dict]) -> list[tuple[str, list[tuple[str, str]]]]:
    def shown(value) -> str:  # noqa: ANN001
        if value is None:
            return "–"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return ", ".join(value) if isinstance(value, list) else str(value)

    titles = {"lora_config": "LoRA (lora_config)", "training_config": "Training (training_config)",
              "qlora_config": "QLoRA (qlora_config)"}
    sections = [(titles[name], [(key, shown(value)) for key, value in values.items()]) for name, values in config.items()]
    if not config["qlora_config"].get("enabled"):
        sections[-1] = ("QLoRA", [("enabled", "no")])
    return sections


@require_POST
@login_required
def job_new_review_partial(request):
    """The whole configuration as it would be trained, checked against the model, or what is wrong."""
    form = JobForm(request.POST, user=request.user)
    form.is_valid()
    config, warnings = None, []
    if not form.config_errors() and "base_model" in form.cleaned_data:
        try:
            config, _, warnings = job_config_for_model(model=form.cleaned_data["base_model"], **form.configs())
        except NexusError as exc:
            form.add_service_error(exc)
    return render(request, "training/_review.html",
                  {"form": form, "config": _review_sections(config.as_dicts()) if config else None, "warnings": warnings})


def _summary(request, job, **extra):
    """The summary partial, stamped with the last event seq read *before* the job's row: the page
    knows it is stale when it has already shown a status event after that seq (a refresh that
    raced a status change) and asks again."""
    from nexus.events import job_events_last_seq
    from nexus.models import JobEvent

    seq = job_events_last_seq(kind=JobEvent.Kind.TRAINING, job_id=job.pk)
    job.refresh_from_db()
    return render(request, "training/_summary.html",
                  {"job": job, "eta": training_job_metrics(job=job)["eta_seconds"], "summary_seq": seq, **extra})


@login_required
def job_detail_page(request, job_id: int):
    job = training_job_get(user=request.user, pk=job_id)
    if request.htmx:
        return _summary(request, job)
    eta = training_job_metrics(job=job)["eta_seconds"]
    events = training_job_events(job=job)
    return render(request, "training/detail.html", {
        "job": job,
        "checkpoints": training_job_checkpoints(job=job),
        "eta": eta,
        "events": events,
        "last_seq": events[-1].seq if events else 0,
        "curves": training_job_curves(job=job),
        "config_sections": _review_sections({"lora_config": job.lora_config, "training_config": job.training_config,
                                             "qlora_config": job.qlora_config}),
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
        return _summary(request, job, control_error=error)
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
