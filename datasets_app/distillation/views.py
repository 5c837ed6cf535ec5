"""Distillation pages: the list (jobs and saved teacher connections), the new-job form with its
live partials (test connection, template preview, cost estimate) and the job page (live counts,
review table, cancel, approve into a dataset). Each view: access helper -> one service or
selector -> render."""
from __future__ import annotations

import copy
import re
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.forms.utils import pretty_name
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from datasets_app.distillation.apis import ItemOutputSerializer
from datasets_app.distillation.engine.filters import REASONS
from datasets_app.distillation.engine.modes import MODE_HELP, MODES
from datasets_app.distillation.jobs import DISTILLATION
from datasets_app.distillation.models import DistillationJob, DistillationTeacher, DistillationTemplate, Provider
from datasets_app.distillation.runner import distillation_counts
from datasets_app.distillation.selectors import (
    distillation_items,
    distillation_job_get,
    distillation_job_log,
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
    teacher_connection_delete,
    teacher_connection_test,
    teacher_parse,
    template_create,
    template_delete,
    template_preview,
)
from datasets_app.models import Dataset
from datasets_app.selectors import dataset_list
from deployments_app.models import Deployment
from deployments_app.selectors import deployment_list
from nexus.errors import NexusError
from nexus.teams import get_for_user, resolve_team, team_choices, user_teams

ITEMS_PER_PAGE = 20
ITEM_STATUSES = ("accepted", "rejected", "pending")
PROBLEMS = {"key": "Wrong key", "unreachable": "Unreachable", "model": "Unknown model", "address": "Address not allowed",
            "other": "Failed"}
# an estimate needs no key: it prices the request without calling the teacher
ESTIMATE_KEY = "not-needed-for-an-estimate"
TEACHER_BLOCKS = 4  # teacher 1 and up to three more
# a teacher block's fields; teacher 1's have no prefix, teacher n's "t<n>_", the judge's "judge_"
BLOCK_FIELDS = ("connection", "provider", "deployment", "model", "base_url", "api_key")
TYPED_FIELDS = ("model", "base_url", "api_key")
JUDGE = "judge_"


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
        self.fields["team"].choices = team_choices(user)

    def add_service_error(self, exc: NexusError) -> None:
        key = next(iter(exc.details), "") if isinstance(exc.details, dict) else ""
        field = key.removeprefix("teacher_config.")
        self.add_error(field if field in self.fields else None, exc.message.split(": ", 1)[-1] if field in self.fields
                       else exc.message)


class DeploymentSelect(forms.Select):
    """The team's deployments; only running ones can be picked."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.disabled_values: set[str] = set()

    def create_option(self, name, value, *args, **kwargs):  # noqa: ANN001, ANN201
        option = super().create_option(name, value, *args, **kwargs)
        if str(value) in self.disabled_values:
            option["attrs"]["disabled"] = True
        return option


def _prefix(block: int | str) -> str:
    return JUDGE if block == "judge" else "" if str(block) == "1" else f"t{block}_"


class DistillationForm(TeacherFieldsMixin):
    """The new-job form; body() is the API's request body (section 7.5). Teacher 1's fields have no
    prefix, teachers 2-4 are the same fields prefixed "t<n>_", a typed judge's "judge_"."""

    name = forms.CharField(max_length=200)
    team = forms.ChoiceField(choices=(), required=False, help_text="")
    connection = forms.ChoiceField(required=False, label="Teacher",
                                   help_text="a saved connection, or a teacher given below")
    provider = forms.ChoiceField(choices=Provider.choices, initial=Provider.OPENAI)
    deployment = forms.ChoiceField(required=False, label="Deployment", widget=DeploymentSelect,
                                   help_text="a running deployment of the team: no key or address needed")
    temperature = forms.FloatField(initial=DEFAULTS["temperature"], min_value=0, max_value=2,
                                   help_text="every teacher's")
    max_tokens = forms.IntegerField(initial=DEFAULTS["max_tokens"], min_value=1, help_text="every teacher's")
    multi_teacher = forms.ChoiceField(choices=[("best", "Best answer: every teacher answers, the judge keeps one"),
                                               ("round_robin", "Round robin: the prompts are shared out")],
                                      initial="best", required=False, widget=forms.RadioSelect,
                                      label="With several teachers")

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
    template_name = forms.CharField(max_length=200, required=False, label="Also save it as a team template named",
                                    help_text="blank: the edited template is used for this job only")
    num_examples = forms.IntegerField(required=False, min_value=1, label="Number of examples",
                                      help_text="blank: every prompt of the list or dataset; 100 for a template")
    include_reasoning = forms.BooleanField(required=False, label="Include reasoning (chain of thought)")

    mode = forms.ChoiceField(choices=[(m, format_html('<strong>{}</strong> <span class="muted">{}</span>', m, MODE_HELP[m]))
                                      for m in MODES], initial="response", widget=forms.RadioSelect)
    pivot_language = forms.CharField(max_length=50, required=False, initial="French", label="Pivot language",
                                     help_text="back_translate goes through this language and back")
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False,
                                    help_text="sent with every prompt (a template's own comes first)")
    batch_size = forms.IntegerField(initial=DEFAULTS["batch_size"], help_text="requests at once")
    rate_limit = forms.IntegerField(initial=DEFAULTS["rate_limit"], help_text="requests a minute")
    output_format = forms.ChoiceField(choices=_choices(OUTPUT_FORMATS), initial=DEFAULTS["output_format"])

    quality_threshold = forms.FloatField(initial=DEFAULTS["quality_threshold"], min_value=0, max_value=1,
                                         help_text="0: no judge; above 0 the judge scores every answer (0-1)")
    judge = forms.ChoiceField(required=False, label="Judge",
                              help_text="scores the answers when the threshold is above 0, and picks the best "
                                        "answer of several teachers")
    min_words = forms.IntegerField(initial=3, min_value=0, max_value=10_000, required=False, label="Minimum words",
                                   help_text="shorter answers are rejected")
    check_language = forms.BooleanField(initial=True, required=False,
                                        label="Reject answers in another language than the prompt")
    near_threshold = forms.FloatField(required=False, min_value=0.5, max_value=1, label="Near-duplicate threshold",
                                      help_text="0.5-1: an answer this similar to an earlier one is rejected; "
                                                "blank: 0.85")

    TEACHER_FIELDS = ("connection", "provider", "deployment", "model", "base_url", "api_key", "temperature",
                      "max_tokens")
    TEMPLATE_FIELDS = ("template", "template_prompt", "template_variables", "template_system_prompt", "template_name")
    GENERATION_FIELDS = ("mode", "system_prompt", "batch_size", "rate_limit", "output_format")
    QUALITY_FIELDS = ("min_words", "check_language", "near_threshold")
    # service detail keys (paths in the request body) -> form fields
    PROMPT_KEYS = {"prompts": "prompts", "dataset_id": "dataset", "template_id": "template",
                   "variables": "template_variables", "num_examples": "num_examples",
                   "include_reasoning": "include_reasoning"}
    TEMPLATE_KEYS = {"prompt": "template_prompt", "variables": "template_variables",
                     "system_prompt": "template_system_prompt", "name": "template_name", "slug": "template_name"}

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user
        teams = team_choices(user)
        self.fields["team"].choices = teams
        self.connections = list(teacher_connection_list(user=user).select_related("team"))
        saved = [(str(c.pk), f"{c.name} ({c.label}{' · ••••' + c.key_last4 if c.key_last4 else ''})")
                 for c in self.connections]
        self.fields["connection"].choices = [("", "Enter a teacher below")] + saved
        self.deployments = list(deployment_list(user=user).select_related("team"))
        self.fields["deployment"].choices = [("", "Choose a deployment")] + [
            (str(d.pk), f"{d.name} ({d.status}{', team ' + d.team.name if len(teams) > 1 else ''})")
            for d in self.deployments]
        self.fields["deployment"].widget.disabled_values = {
            str(d.pk) for d in self.deployments if d.status != Deployment.Status.RUNNING}
        for block in [*range(2, TEACHER_BLOCKS + 1), "judge"]:
            for name in BLOCK_FIELDS:
                if block == "judge" and name == "connection":
                    continue  # the judge picks a saved connection in its own selector
                field = copy.deepcopy(self.fields[name])
                field.required = False
                field.label = "Saved connection" if name == "connection" else field.label or pretty_name(name)
                self.fields[f"{_prefix(block)}{name}"] = field
        self.fields["judge"].choices = [("", "The first teacher"), ("typed", "Another model, given below")] + (
            [("Saved connections", saved)] if saved else [])
        ready = dataset_list(user=user).filter(status=Dataset.Status.READY)
        self.fields["dataset"].choices = [("", "Choose a dataset")] + [(str(d.pk), f"{d.name} ({d.num_usable} examples)")
                                                                        for d in ready]
        self.templates = template_list(user=user)
        self.fields["template"].choices = [("", "An empty template")] + [
            (t.id, t.name if t.builtin else f"{t.name} (team template)") for t in self.templates]

    def clean_template_variables(self) -> dict[str, list[str]]:
        return parse_variables(self.cleaned_data.get("template_variables", ""))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        running = {str(d.pk): d for d in self.deployments}
        for block in [*self.active_blocks(), "judge"]:
            p = _prefix(block)
            chosen = data.get(f"{p}deployment")
            if data.get(f"{p}provider") == Provider.DEPLOYED and chosen in running and \
                    running[chosen].status != Deployment.Status.RUNNING:
                self.add_error(f"{p}deployment", f"'{running[chosen].name}' is not running "
                                                 f"({running[chosen].status}); start it first")
        return data

    def active_blocks(self) -> list[int]:
        """Teacher 1, and each further teacher block with anything chosen or typed in it."""
        return [1] + [n for n in range(2, TEACHER_BLOCKS + 1)
                      if any((self.data.get(f"t{n}_{f}") or "").strip() for f in BLOCK_FIELDS if f != "provider")]

    def block_raw(self, block: int | str) -> dict[str, Any]:
        """One teacher block as the API takes it: a saved connection, a deployment or a typed teacher."""
        data, p = self.cleaned_data, _prefix(block)
        if data.get(f"{p}connection"):
            return {"connection_id": int(data[f"{p}connection"])}
        provider = data.get(f"{p}provider") or Provider.OPENAI
        if provider == Provider.DEPLOYED:
            chosen = data.get(f"{p}deployment") or ""
            return {"provider": provider, "deployment_id": int(chosen) if chosen.isdecimal() else None}
        raw = {"provider": provider, "model": data.get(f"{p}model", ""), "api_key": data.get(f"{p}api_key", "")}
        if data.get(f"{p}base_url"):
            raw["base_url"] = data[f"{p}base_url"]
        return raw

    def teacher_raw(self) -> dict[str, Any]:
        return self.block_raw(1)

    def judge_needed(self, teachers: int) -> bool:
        data = self.cleaned_data
        return (data.get("quality_threshold") or 0) > 0 or (teachers > 1 and (data.get("multi_teacher") or "best")
                                                             == "best")

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

    def body(self, *, template_id: str | int | None = None) -> dict[str, Any]:
        """The request body; `template_id` is the editor's template when it is saved (a built-in or
        the team's), else the editor's template goes inline."""
        data = self.cleaned_data
        self._blocks = self.active_blocks()
        teachers = [self.block_raw(n) for n in self._blocks]
        for teacher in teachers:
            for key in ("temperature", "max_tokens"):
                if data.get(key) is not None:
                    teacher[key] = data[key]
        source = data.get("source") or "prompts"
        config: dict[str, Any] = {"include_reasoning": bool(data.get("include_reasoning"))}
        if source == "prompts":
            config["prompts"] = [line.strip() for line in data.get("prompts", "").splitlines() if line.strip()]
        elif source == "dataset":
            config["dataset_id"] = int(data["dataset"]) if (data.get("dataset") or "").isdecimal() else ""
        elif template_id is not None:
            config["template_id"] = template_id
            config["variables"] = data.get("template_variables") or {}
        else:
            config["template"] = self.template_raw()
        if data.get("num_examples"):
            config["num_examples"] = data["num_examples"]
        body: dict[str, Any] = {"name": data.get("name", ""), "prompts_config": config,
                                "mode": data.get("mode") or "response", "system_prompt": data.get("system_prompt", ""),
                                "output_format": data.get("output_format") or DEFAULTS["output_format"]}
        if len(teachers) == 1:
            body["teacher_config"] = teachers[0]
        else:
            body["teacher_configs"] = teachers
            body["multi_teacher"] = data.get("multi_teacher") or "best"
        judge = data.get("judge") or ""
        if judge and self.judge_needed(len(teachers)):
            body["judge_config"] = self.block_raw("judge") if judge == "typed" else {"connection_id": int(judge)}
        quality: dict[str, Any] = {"check_language": bool(data.get("check_language"))}
        for key in ("min_words", "near_threshold"):
            if data.get(key) is not None:
                quality[key] = data[key]
        body["quality"] = quality
        if body["mode"] == "back_translate" and data.get("pivot_language"):
            body["pivot_language"] = data["pivot_language"]
        for key in ("quality_threshold", "batch_size", "rate_limit"):
            if data.get(key) is not None:
                body[key] = data[key]
        return body

    def _block_field(self, prefix: str, name: str) -> str:
        name = "deployment" if name == "deployment_id" else name
        return f"{prefix}{name}" if name in BLOCK_FIELDS and f"{prefix}{name}" in self.fields else \
            name if name in ("temperature", "max_tokens") else "judge" if prefix == JUDGE else f"{prefix}connection"

    def field_for(self, key: str, *, template: bool = False) -> str | None:
        head, _, rest = key.partition(".")
        if template:
            return self.TEMPLATE_KEYS.get(head.split("[")[0])
        name = rest.split(".")[0]
        if head == "teacher_config":
            return self._block_field("", name)
        if head.startswith("teacher_configs["):
            index = head[len("teacher_configs["):-1]
            blocks = getattr(self, "_blocks", None) or self.active_blocks()
            block = blocks[int(index)] if index.isdecimal() and int(index) < len(blocks) else 1
            return self._block_field(_prefix(block), name)
        if head == "judge_config":
            return self._block_field(JUDGE, name) if (self.cleaned_data.get("judge") == "typed") else "judge"
        if head == "quality":
            return name if name in self.QUALITY_FIELDS else "quality_threshold"
        if head == "prompts_config" and name == "template":  # the inline template's own fields
            return self.TEMPLATE_KEYS.get(rest.split(".")[1] if rest.count(".") else "prompt", "template_prompt")
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
            short, problem = key.split(".", 1)[-1].removeprefix("template.") if "." in key else key, message[len(key) + 2:]
            bare = field.removeprefix("template_").removeprefix(JUDGE)
            bare = bare.split("_", 1)[1] if re.match(r"t\d_", bare) else bare
            short_bare = "deployment" if short == "deployment_id" else short
            message = problem if short in (field, bare) or short_bare == bare else f"{short}: {problem}"
        self.add_error(field, message)

    def teacher_blocks(self) -> list[dict[str, Any]]:
        """Each teacher block's fields, for the page; the blocks after the first start hidden when empty."""
        active = self.active_blocks()
        return [{"n": n, "prefix": _prefix(n), "active": n in active,
                 "fields": [self[f"{_prefix(n)}{f}"] for f in BLOCK_FIELDS]} for n in range(1, TEACHER_BLOCKS + 1)]

    def sections(self) -> dict[str, list]:
        return {"judge": [self[f"{JUDGE}{f}"] for f in BLOCK_FIELDS if f != "connection"],
                "generation": [self[f] for f in self.GENERATION_FIELDS],
                "quality": [self[f] for f in self.QUALITY_FIELDS]}


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
        "team_templates": [(team, t) for team in user_teams(request.user).order_by("name")
                           for t in template_list(user=request.user, team=team) if not t.builtin],
    }, status=status)


@require_POST
@login_required
def connection_delete_page(request, connection_id: int):
    """Jobs that used the connection keep their own copy of the teacher."""
    connection = teacher_connection_get(user=request.user, pk=connection_id, write=True)
    teacher_connection_delete(connection=connection)
    messages.success(request, f"Deleted the connection '{connection.name}'.")
    return redirect("distillation-list")


@require_POST
@login_required
def template_delete_page(request, template_id: int):
    """A team's own template (jobs made from it keep what it rendered)."""
    row = get_for_user(DistillationTemplate.objects.all(), request.user, pk=template_id, write=True)
    template_delete(template=row)
    messages.success(request, f"Deleted the template '{row.name}'.")
    return redirect("distillation-list")


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
    """The job. The editor's template goes with it inline unless it is a saved one as it stands, or
    the editor names it to be saved as a team template too: then both are saved or neither. Errors go
    on their fields."""
    template_id = None
    if form.cleaned_data.get("source") == "template":
        template = form.chosen_template(team)
        if template is not None:
            template_id = template.id
        elif form.cleaned_data.get("template_name"):
            try:
                template_id = template_create(team=team, user=request.user, raw=form.template_raw()).pk
            except NexusError as exc:
                form.add_service_error(exc, template=True)
                raise
    try:
        return distillation_job_create(team=team, user=request.user, body=form.body(template_id=template_id))
    except NexusError as exc:
        form.add_service_error(exc)
        raise


@require_POST
@login_required
def teacher_test_partial(request):
    """The new-job form's "Test connection" of one teacher block (`which`: 1-4, or judge): the saved
    connection picked, the deployment, or the teacher typed in (not saved)."""
    form = DistillationForm(request.POST, user=request.user)
    team = _team(request, form)
    form.is_valid()
    which = request.POST.get("which", "1")
    block = which if which == "judge" or which in {str(n) for n in range(2, TEACHER_BLOCKS + 1)} else 1
    p = _prefix(block)
    if block == "judge":
        chosen = request.POST.get("judge", "")
        if not chosen:  # the judge is the first teacher unless another is chosen
            block, p, chosen = 1, "", request.POST.get("connection", "")
        chosen = "" if chosen == "typed" else chosen
    else:
        chosen = request.POST.get(f"{p}connection", "")
    if chosen:  # any id, not only the form's choices: another team's connection is a 404, not ignored
        connection = teacher_connection_get(user=request.user, pk=int(chosen) if chosen.isdecimal() else 0, write=True)
        return _check_result(request, teacher_connection_test(connection=connection))
    if form.errors.get(f"{p}deployment"):
        return _check_result(request, None, error=form.errors[f"{p}deployment"][0])
    try:
        parsed = teacher_parse(team=team, user=request.user, raw=form.block_raw(block))
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
    blocks = DistillationForm(post, user=request.user).active_blocks()
    for p in [*(_prefix(n) for n in blocks), *([JUDGE] if post.get("judge") == "typed" else [])]:
        if not post.get(f"{p}connection") and not post.get(f"{p}api_key") and \
                post.get(f"{p}provider") != Provider.DEPLOYED:
            post[f"{p}api_key"] = ESTIMATE_KEY
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
    """The body as the form would send it; a saved template as it stands by its id, else inline."""
    template = form.chosen_template(team) if form.cleaned_data.get("source") == "template" else None
    return form.body(template_id=template.id if template is not None else None)


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


def distillation_detail_page(request, distillation_id: int):
    job = distillation_job_get(user=request.user, pk=distillation_id)
    if request.htmx:
        return _status(request, job)
    from nexus.events import job_events_last_seq

    last_seq = job_events_last_seq(kind=DISTILLATION.name, job_id=job.pk)
    counts = distillation_counts(job_id=job.pk)
    return render(request, "distillation/detail.html", {
        "job": job, **_counts_context(counts), "summary_seq": last_seq, "last_seq": last_seq,
        "events": distillation_job_log(job=job, upto=last_seq),
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
