"""Distillation pages: the list (jobs and saved teacher connections), the new-job form with its
live partials (test connection, template preview, cost estimate) and the job page (live counts,
review table, cancel, approve into a dataset). Each view: access helper -> one service or
selector -> render."""
from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from datasets_app.distillation.apis import ItemOutputSerializer
from datasets_app.distillation.engine.filters import REASONS
from datasets_app.distillation.engine.modes import MODE_HELP, MODES
from datasets_app.distillation.jobs import DISTILLATION
from datasets_app.distillation.models import DistillationJob, DistillationTeacher, Provider
from datasets_app.distillation.runner import distillation_counts
from datasets_app.distillation.selectors import (
    distillation_items,
    distillation_job_get,
    distillation_job_list,
    teacher_connection_get,
    teacher_connection_list,
    template_list,
)
from datasets_app.distillation.services import (
    DEFAULTS,
    OUTPUT_FORMATS,
    distillation_item_review,
    distillation_job_approve,
    distillation_job_cancel,
    distillation_job_create,
    job_estimate,
    job_request_parse,
    teacher_check,
    teacher_connection_create,
    teacher_connection_test,
    teacher_parse,
    template_create,
    template_preview,
)
from datasets_app.models import Dataset
from datasets_app.selectors import dataset_list
from nexus.errors import NexusError
from nexus.teams import resolve_team, user_teams

ITEMS_PER_PAGE = 20
ITEM_STATUSES = ("accepted", "rejected", "pending")
PROBLEMS = {"key": "Wrong key", "unreachable": "Unreachable", "model": "Unknown model", "address": "Address not allowed",
            "other": "Failed"}
# an estimate needs no key: it prices the request without calling the teacher
ESTIMATE_KEY = "not-needed-for-an-estimate"


def _choices(values) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(v, v) for v in values]


def parse_variables(text: str) -> dict[str, list[str]]:
    """The template editor's variables, one a line: `name: value one | value two`."""
    variables: dict[str, list[str]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, colon, values = line.partition(":")
        if not colon or not name.strip():
            raise forms.ValidationError(f"line {number}: write it as name: value one | value two")
        variables[name.strip()] = [v.strip() for v in values.split("|") if v.strip()]
    return variables


def variables_text(variables: dict[str, list[str]]) -> str:
    return "\n".join(f"{name}: {' | '.join(values)}" for name, values in variables.items())


def _team_choices(user) -> list[tuple[int, str]]:  # noqa: ANN001
    """The user's teams, their personal one first (the default)."""
    teams = sorted(user_teams(user), key=lambda t: (t.personal_owner_id != user.pk, t.name.lower()))
    return [(t.pk, t.name) for t in teams]


class TeacherFieldsMixin(forms.Form):
    provider = forms.ChoiceField(choices=[(Provider.OPENAI, Provider.OPENAI.label),
                                          (Provider.ANTHROPIC, Provider.ANTHROPIC.label)], initial=Provider.OPENAI)
    model = forms.CharField(max_length=200, required=False, help_text="e.g. gpt-4o-mini or claude-haiku-4-5")
    base_url = forms.CharField(max_length=500, required=False, label="Base URL",
                               help_text="blank: the provider's own API")
    # never rendered back: a page shows ••••last4 of a saved key and nothing of a typed one
    api_key = forms.CharField(max_length=500, required=False, label="API key",
                              help_text="never shown again: after an error, type it again", widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}))

    def teacher_raw(self) -> dict[str, Any]:
        data = self.cleaned_data
        raw = {"provider": data.get("provider") or Provider.OPENAI, "model": data.get("model", ""),
               "api_key": data.get("api_key", "")}
        if data.get("base_url"):
            raw["base_url"] = data["base_url"]
        return raw


class ConnectionForm(TeacherFieldsMixin):
    name = forms.CharField(max_length=200)
    team = forms.ChoiceField(choices=(), required=False, help_text="")
    field_order = ["name", "team", "provider", "model", "base_url", "api_key"]

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = _team_choices(user)

    def add_service_error(self, exc: NexusError) -> None:
        key = next(iter(exc.details), "") if isinstance(exc.details, dict) else ""
        field = key.removeprefix("teacher_config.")
        self.add_error(field if field in self.fields else None, exc.message.split(": ", 1)[-1] if field in self.fields
                       else exc.message)


class DistillationForm(TeacherFieldsMixin):
    """The new-job form; body() is the API's request body (section 7.5)."""

    name = forms.CharField(max_length=200)
    team = forms.ChoiceField(choices=(), required=False, help_text="")
    connection = forms.ChoiceField(required=False, label="Teacher",
                                   help_text="a saved connection, or a teacher given below")
    temperature = forms.FloatField(initial=DEFAULTS["temperature"], min_value=0, max_value=2)
    max_tokens = forms.IntegerField(initial=DEFAULTS["max_tokens"], min_value=1)

    source = forms.ChoiceField(choices=[("prompts", "Prompts, one a line"), ("dataset", "A ready dataset"),
                                        ("template", "A template")], initial="prompts", widget=forms.RadioSelect,
                               label="Prompts from")
    prompts = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, label="Prompts",
                              help_text="one prompt a line")
    dataset = forms.ChoiceField(required=False, label="Dataset",
                                help_text="its user turns are the prompts; rephrase, expand, negative and "
                                          "back_translate also keep its answers")
    template = forms.ChoiceField(required=False, label="Start from", help_text="a built-in or a team's template")
    template_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, label="Prompt",
                                      help_text="{name} placeholders; {{ and }} for literal braces")
    template_variables = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Variables",
                                         help_text="one a line: name: value one | value two")
    template_system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                             label="Template system prompt")
    template_name = forms.CharField(max_length=200, required=False, label="Save the edited template as",
                                    help_text="blank: named after the job")
    num_examples = forms.IntegerField(required=False, min_value=1, label="Number of examples",
                                      help_text="blank: every prompt of the list or dataset; 100 for a template")
    include_reasoning = forms.BooleanField(required=False, label="Include reasoning (chain of thought)")

    mode = forms.ChoiceField(choices=[(m, format_html('<strong>{}</strong> <span class="muted">{}</span>', m, MODE_HELP[m]))
                                      for m in MODES], initial="response", widget=forms.RadioSelect)
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                    help_text="sent with every prompt (a template's own comes first)")
    quality_threshold = forms.FloatField(initial=DEFAULTS["quality_threshold"], min_value=0, max_value=1,
                                         help_text="0: no judge; above 0 the teacher scores every answer (0-1)")
    batch_size = forms.IntegerField(initial=DEFAULTS["batch_size"], help_text="requests at once")
    rate_limit = forms.IntegerField(initial=DEFAULTS["rate_limit"], help_text="requests a minute")
    output_format = forms.ChoiceField(choices=_choices(OUTPUT_FORMATS), initial=DEFAULTS["output_format"])

    TEACHER_FIELDS = ("connection", "provider", "model", "base_url", "api_key", "temperature", "max_tokens")
    TEMPLATE_FIELDS = ("template", "template_prompt", "template_variables", "template_system_prompt", "template_name")
    GENERATION_FIELDS = ("mode", "system_prompt", "quality_threshold", "batch_size", "rate_limit", "output_format")
    # service detail keys (paths in the request body) -> form fields
    PROMPT_KEYS = {"prompts": "prompts", "dataset_id": "dataset", "template_id": "template",
                   "variables": "template_variables", "num_examples": "num_examples",
                   "include_reasoning": "include_reasoning"}
    TEMPLATE_KEYS = {"prompt": "template_prompt", "variables": "template_variables",
                     "system_prompt": "template_system_prompt", "name": "template_name", "slug": "template_name"}

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["team"].choices = _team_choices(user)
        self.connections = list(teacher_connection_list(user=user).select_related("team"))
        self.fields["connection"].choices = [("", "Enter a teacher below")] + [
            (str(c.pk), f"{c.name} ({c.label}{' · ••••' + c.key_last4 if c.key_last4 else ''})")
            for c in self.connections]
        ready = dataset_list(user=user).filter(status=Dataset.Status.READY)
        self.fields["dataset"].choices = [("", "Choose a dataset")] + [(str(d.pk), f"{d.name} ({d.num_usable} examples)")
                                                                        for d in ready]
        self.templates = template_list(user=user)
        self.fields["template"].choices = [("", "An empty template")] + [
            (t.id, t.name if t.builtin else f"{t.name} (team template)") for t in self.templates]

    def clean_template_variables(self) -> dict[str, list[str]]:
        return parse_variables(self.cleaned_data.get("template_variables", ""))

    def chosen_template(self, team):  # noqa: ANN001, ANN201
        """The template picked in the editor's "Start from", when the editor still holds it as it
        is saved (same prompt and system prompt) in this team or built in; else None."""
        wanted = self.cleaned_data.get("template")
        for t in template_list(user=self.user, team=team):
            if t.id == wanted:
                edited = (t.prompt.strip() != self.cleaned_data.get("template_prompt", "").strip()
                          or t.system_prompt.strip() != self.cleaned_data.get("template_system_prompt", "").strip())
                return None if edited else t
        return None

    def template_raw(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {"name": data.get("template_name") or f"{data.get('name') or 'Distillation'} template",
                "prompt": data.get("template_prompt", ""), "variables": data.get("template_variables") or {},
                "system_prompt": data.get("template_system_prompt", "")}

    def body(self, *, template_id: str | int | None = None, prompts: list[str] | None = None) -> dict[str, Any]:
        """The request body; `template_id` is the editor's template (saved), `prompts` stand in for it
        (the estimate of an unsaved one)."""
        data = self.cleaned_data
        if data.get("connection"):
            teacher: dict[str, Any] = {"connection_id": int(data["connection"])}
        else:
            teacher = self.teacher_raw()
        for key in ("temperature", "max_tokens"):
            if data.get(key) is not None:
                teacher[key] = data[key]
        source = data.get("source") or "prompts"
        config: dict[str, Any] = {"include_reasoning": bool(data.get("include_reasoning"))}
        if prompts is not None:
            config["prompts"] = prompts
        elif source == "prompts":
            config["prompts"] = [line.strip() for line in data.get("prompts", "").splitlines() if line.strip()]
        elif source == "dataset":
            config["dataset_id"] = int(data["dataset"]) if (data.get("dataset") or "").isdigit() else ""
        else:
            config["template_id"] = template_id
            config["variables"] = data.get("template_variables") or {}
        if data.get("num_examples"):
            config["num_examples"] = data["num_examples"]
        body = {"name": data.get("name", ""), "teacher_config": teacher, "prompts_config": config,
                "mode": data.get("mode") or "response", "system_prompt": data.get("system_prompt", ""),
                "output_format": data.get("output_format") or DEFAULTS["output_format"]}
        for key in ("quality_threshold", "batch_size", "rate_limit"):
            if data.get(key) is not None:
                body[key] = data[key]
        return body

    def field_for(self, key: str, *, template: bool = False) -> str | None:
        head, _, rest = key.partition(".")
        if template:
            return self.TEMPLATE_KEYS.get(head.split("[")[0])
        if head in ("teacher_config", "judge_config"):
            name = rest.split(".")[0]
            return "connection" if name == "connection_id" else name if name in self.TEACHER_FIELDS else "connection"
        if head == "prompts_config":
            return self.PROMPT_KEYS.get(rest.split(".")[0].split("[")[0], "source")
        return head if head in self.fields else None

    def add_service_error(self, exc: NexusError, *, template: bool = False) -> None:
        """A service error next to the field its details name (`prompts_config.prompts[2]`)."""
        details = exc.details if isinstance(exc.details, dict) else {}
        key = next(iter(details), "")
        field = self.field_for(key, template=template) if key else None
        message = exc.message
        if field and message.startswith(f"{key}: "):
            short, problem = key.removeprefix("teacher_config.").removeprefix("prompts_config."), message[len(key) + 2:]
            message = problem if short in (field, field.removeprefix("template_")) else f"{short}: {problem}"
        self.add_error(field, message)

    def sections(self) -> dict[str, list]:
        return {"teacher": [self[f] for f in self.TEACHER_FIELDS if f != "connection"],
                "generation": [self[f] for f in self.GENERATION_FIELDS]}


def _team(request, form: forms.Form | None = None):  # noqa: ANN001, ANN202
    """The team a form acts in (its `team` field, else the personal team), for writing: 404 when
    the user is not in it, 403 for a viewer."""
    value = form.data.get("team") if form is not None else request.POST.get("team")
    return resolve_team(request.user, value or None, write=True)


# -- list ----------------------------------------------------------------------------------------------


@login_required
def distillation_list_page(request, connection_form: ConnectionForm | None = None, status: int = 200):
    return render(request, "distillation/list.html", {
        "jobs": distillation_job_list(user=request.user).select_related("team", "dataset"),
        "connections": teacher_connection_list(user=request.user).select_related("team"),
        "connection_form": connection_form or ConnectionForm(user=request.user),
    }, status=status)


@require_POST
@login_required
def connection_create_page(request):
    form = ConnectionForm(request.POST, user=request.user)
    team = _team(request, form)
    if form.is_valid():
        try:
            connection = teacher_connection_create(team=team, user=request.user,
                                                   raw={"name": form.cleaned_data["name"], **form.teacher_raw()})
        except NexusError as exc:
            form.add_service_error(exc)
            return distillation_list_page(request, connection_form=form, status=exc.status_code)
        messages.success(request, f"Saved the connection '{connection.name}'.")
        return redirect("distillation-list")
    return distillation_list_page(request, connection_form=form, status=400)


@require_POST
@login_required
def connection_test_partial(request, connection_id: int):
    """One cheap call with a saved connection: ok, or what failed."""
    connection = teacher_connection_get(user=request.user, pk=connection_id, write=True)
    result = teacher_connection_test(connection=connection)
    if not request.htmx:
        (messages.success if result.ok else messages.error)(request, f"{connection.name}: {result.message}")
        return redirect("distillation-list")
    return _check_result(request, result)


def _check_result(request, result, error: str = ""):  # noqa: ANN001, ANN202
    return render(request, "distillation/_check.html",
                  {"result": result, "problem": PROBLEMS.get(getattr(result, "problem", ""), "Failed"),
                   "error": error})


# -- new job ---------------------------------------------------------------------------------------------


@login_required
def distillation_new_page(request):
    dataset = request.GET.get("dataset", "")  # from a dataset's page: its prompts, to answer or augment
    form = DistillationForm(request.POST or None, user=request.user,
                            initial={"dataset": dataset, "source": "dataset" if dataset else "prompts"})
    status = 200
    if request.method == "POST":
        team = _team(request, form)
        if form.is_valid():
            try:
                job = _create(request, form, team)
            except NexusError as exc:
                status = exc.status_code
            else:
                return redirect("distillation-detail", distillation_id=job.pk)
        else:
            status = 400
    return render(request, "distillation/new.html", {
        "form": form, "templates_json": [{"id": t.id, "prompt": t.prompt, "system_prompt": t.system_prompt,
                                          "variables": variables_text(t.variables), "description": t.description}
                                         for t in form.templates],
    }, status=status)


@transaction.atomic
def _create(request, form: DistillationForm, team) -> DistillationJob:  # noqa: ANN001
    """The job, after saving the editor's template when it was written or edited here (the API
    takes a saved template's id). Either both are saved or neither; errors go on their fields."""
    template_id = None
    if form.cleaned_data.get("source") == "template":
        template = form.chosen_template(team)
        if template is None:
            try:
                template_id = template_create(team=team, user=request.user, raw=form.template_raw()).pk
            except NexusError as exc:
                form.add_service_error(exc, template=True)
                raise
        else:
            template_id = template.id
    try:
        return distillation_job_create(team=team, user=request.user, body=form.body(template_id=template_id))
    except NexusError as exc:
        form.add_service_error(exc)
        raise


@require_POST
@login_required
def teacher_test_partial(request):
    """The new-job form's "Test connection": the saved connection picked, or the teacher typed in
    (not saved)."""
    form = DistillationForm(request.POST, user=request.user)
    team = _team(request, form)
    form.is_valid()
    chosen = request.POST.get("connection", "")
    if chosen:  # any id, not only the form's choices: another team's connection is a 404, not ignored
        connection = teacher_connection_get(user=request.user, pk=int(chosen) if chosen.isdigit() else 0, write=True)
        return _check_result(request, teacher_connection_test(connection=connection))
    try:
        parsed = teacher_parse(team=team, user=request.user, raw=form.teacher_raw())
    except NexusError as exc:
        return _check_result(request, None, error=exc.message)
    return _check_result(request, teacher_check(row=DistillationTeacher(**parsed.fields())))


@require_POST
@login_required
def template_preview_partial(request):
    """The editor's live preview: the first prompt for a sample row and how many there are, or
    what is wrong, named."""
    _team(request)
    ctx: dict[str, Any] = {}
    try:
        variables = parse_variables(request.POST.get("template_variables", ""))
        ctx["preview"] = template_preview(prompt=request.POST.get("template_prompt", ""), variables=variables,
                                          system_prompt=request.POST.get("template_system_prompt", ""), limit=3)
    except forms.ValidationError as exc:
        ctx["error"] = f"Variables: {exc.messages[0]}"
    except NexusError as exc:
        ctx["error"] = exc.message
    return render(request, "distillation/_template_preview.html", ctx)


@require_POST
@login_required
def estimate_partial(request):
    """Requests, cost (low / expected / high, per teacher and judge) and minutes for the form as it is."""
    post = request.POST.copy()
    if not post.get("connection") and not post.get("api_key"):
        post["api_key"] = ESTIMATE_KEY
    form = DistillationForm(post, user=request.user)
    team = _team(request, form)
    ctx: dict[str, Any] = {}
    if not form.is_valid():
        ctx["errors"] = {form[f].label if f in form.fields else f: e for f, e in form.errors.items() if f != "name"}
    if not ctx.get("errors"):
        if not form.cleaned_data.get("name"):
            form.cleaned_data["name"] = "estimate"
        try:
            ctx["estimate"] = job_estimate(request=job_request_parse(team=team, user=request.user,
                                                                     body=_estimate_body(form, team)))
        except NexusError as exc:
            ctx["error"] = exc.message
    return render(request, "distillation/_estimate.html", ctx)


def _estimate_body(form: DistillationForm, team) -> dict[str, Any]:  # noqa: ANN001
    """An unsaved template is estimated from the prompts it renders, repeated up to the number of
    examples (what the teacher would write past its combinations costs about the same)."""
    if form.cleaned_data.get("source") != "template":
        return form.body()
    template = form.chosen_template(team)
    if template is not None:
        return form.body(template_id=template.id)
    wanted = form.cleaned_data.get("num_examples") or 100
    preview = template_preview(prompt=form.cleaned_data.get("template_prompt", ""),
                               variables=form.cleaned_data.get("template_variables") or {},
                               system_prompt=form.cleaned_data.get("template_system_prompt", ""),
                               limit=min(wanted, 1000))
    rendered = preview["prompts"] or [""]
    body = form.body(prompts=[rendered[i % len(rendered)] for i in range(wanted)])
    body["prompts_config"]["num_examples"] = wanted
    return body


# -- job -------------------------------------------------------------------------------------------------


def _status(request, job: DistillationJob, **extra) -> HttpResponse:
    """The status partial, stamped with the last event seq read before the counts (see job.js)."""
    from nexus.events import job_events_last_seq

    seq = job_events_last_seq(kind=DISTILLATION.name, job_id=job.pk)
    counts = distillation_counts(job_id=job.pk)
    job.refresh_from_db()
    return render(request, "distillation/_status.html", {"job": job, **_counts_context(counts), "summary_seq": seq,
                                                         **extra})


def _counts_context(counts: dict[str, Any]) -> dict[str, Any]:
    total = counts["num_items"] + counts["prompts_to_generate"]
    pending = max(0, total - counts["accepted"] - counts["rejected"])
    most = max(counts["rejected_by_reason"].values(), default=0) or 1
    reasons = [{"key": key, "label": REASONS.get(key, key), "count": n, "width": round(100 * n / most, 1)}
               for key, n in sorted(counts["rejected_by_reason"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return {"counts": counts, "reasons": reasons, "total": total, "pending": pending,
            "split": {k: round(100 * counts[k] / total, 2) if total else 0 for k in ("accepted", "rejected")}}


def _log(job: DistillationJob, *, upto: int) -> list:
    """The job's log lines up to `upto` (the page's websocket resumes after it), not its
    once-a-second metric events; the newest 500."""
    from nexus.models import JobEvent

    events = JobEvent.objects.filter(job_kind=DISTILLATION.name, job_id=job.pk, seq__lte=upto).exclude(
        type=JobEvent.Type.METRIC)
    return list(reversed(events.order_by("-seq")[:500]))


@login_required
def distillation_detail_page(request, distillation_id: int):
    job = distillation_job_get(user=request.user, pk=distillation_id)
    if request.htmx:
        return _status(request, job)
    from nexus.events import job_events_last_seq

    last_seq = job_events_last_seq(kind=DISTILLATION.name, job_id=job.pk)
    counts = distillation_counts(job_id=job.pk)
    return render(request, "distillation/detail.html", {
        "job": job, **_counts_context(counts), "summary_seq": last_seq, "last_seq": last_seq,
        "events": _log(job, upto=last_seq),
        "teachers": job.teachers.all(), "config": job.config, "reason_labels": REASONS, **_items_context(request, job),
    })


def _items_context(request, job: DistillationJob) -> dict[str, Any]:
    status = request.GET.get("status", "")
    status = status if status in ITEM_STATUSES else ""
    reason = request.GET.get("reason", "")[:32]
    reason = reason if reason in REASONS else ""
    page = Paginator(distillation_items(job=job, status=status, reason=reason), ITEMS_PER_PAGE).get_page(
        request.GET.get("page"))
    query = "".join(f"{k}={v}&" for k, v in (("status", status), ("reason", reason)) if v)
    return {"page": page, "items": _rows(page.object_list), "filter_status": status,
            "filter_reason": reason, "filter_reason_label": REASONS.get(reason, ""), "filter_query": query,
            "filter_choices": [("", "all"), ("accepted", "accepted"), ("rejected", "rejected"), ("pending", "pending")]}


def _rows(items) -> list[dict[str, Any]]:  # noqa: ANN001
    """Items as the API shows them (the response is the record's output or the last answer), with
    their reason in words."""
    return [{**row, "reason_label": REASONS.get(row["reason"], row["reason"])}
            for row in ItemOutputSerializer(items, many=True).data]


@login_required
def distillation_items_partial(request, distillation_id: int):
    job = distillation_job_get(user=request.user, pk=distillation_id)
    return render(request, "distillation/_items.html", {"job": job, **_items_context(request, job)})


@require_POST
@login_required
def distillation_item_review_partial(request, distillation_id: int, item_id: int):
    """Accept or reject one item by hand; htmx gets the row back (and the counts refresh)."""
    job = distillation_job_get(user=request.user, pk=distillation_id, write=True)
    error = ""
    try:
        distillation_item_review(job=job, item_id=item_id, user=request.user,
                                 decision=request.POST.get("decision", ""))
    except NexusError as exc:
        error = exc.message
    if not request.htmx:
        if error:
            messages.error(request, error)
        return redirect("distillation-detail", distillation_id=job.pk)
    item = distillation_items(job=job).get(pk=item_id)
    response = render(request, "distillation/_item_row.html", {"job": job, "item": _rows([item])[0], "error": error})
    response["HX-Trigger"] = "distillation-reviewed"
    return response


@require_POST
@login_required
def distillation_cancel_page(request, distillation_id: int):
    job = distillation_job_get(user=request.user, pk=distillation_id, write=True)
    error = None
    try:
        job = distillation_job_cancel(job=job)
    except NexusError as exc:
        error = exc.message
    if request.htmx:
        return _status(request, job, control_error=error)
    if error:
        messages.error(request, error)
    return redirect("distillation-detail", distillation_id=distillation_id)


@require_POST
@login_required
def distillation_approve_page(request, distillation_id: int):
    """The accepted items become a dataset; off to its page."""
    job = distillation_job_get(user=request.user, pk=distillation_id, write=True)
    try:
        dataset = distillation_job_approve(job=job, user=request.user, name=request.POST.get("name", "")[:200])
    except NexusError as exc:
        messages.error(request, exc.message)
        return redirect("distillation-detail", distillation_id=distillation_id)
    messages.success(request, f"Job '{job.name}' became the dataset '{dataset.name}'.")
    return redirect("dataset-detail", dataset_id=dataset.pk)
