"""The evaluation pages' forms. Each turns what a person typed into the REST API's request body
(the services take that body) and puts a service's refusal next to the field its details name."""
from __future__ import annotations

import re
from typing import Any

from django import forms

from adapters_app.selectors import adapter_list
from datasets_app.distillation.models import Provider
from datasets_app.distillation.selectors import teacher_connection_list
from datasets_app.distillation.views import TeacherFieldsMixin
from deployments_app.models import Deployment
from deployments_app.selectors import deployment_list
from evaluation_app.engine.judge import CRITERIA, CRITERIA_DESCRIPTIONS
from evaluation_app.models import ComparisonSession
from evaluation_app.selectors import session_list
from evaluation_app.services import SAMPLING_DEFAULTS
from nexus.errors import NexusError

TURN_SEPARATOR = "---"
PROMPTS_HELP = ("One prompt a line. Conversation: one turn a line, the user's first; a line starting with "
                "“assistant:” is a given answer, every other line a user turn the models answer in turn; "
                f"a line “{TURN_SEPARATOR}” starts the next conversation.")


def prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def conversations(text: str) -> list[list[dict[str, str]]]:
    """The prompts box of a conversation session: conversations separated by a `---` line, a turn a
    line; `assistant:` marks a given answer, `user:` (optional) a user turn."""
    out: list[list[dict[str, str]]] = [[]]
    for line in prompt_lines(text):
        if line == TURN_SEPARATOR:
            out.append([])
            continue
        head, colon, rest = line.partition(":")
        role = head.strip().lower() if colon else ""
        if role in ("user", "assistant"):
            out[-1].append({"role": role, "content": rest.strip()})
        else:
            out[-1].append({"role": "user", "content": line})
    return [turns for turns in out if turns]


def whole_numbers(text: str) -> list[int]:
    values = [v for v in re.split(r"[,\s]+", text.strip()) if v]
    if not values or not all(v.isdecimal() for v in values):
        raise forms.ValidationError("write whole numbers separated by commas, e.g. 64, 256")
    return [int(v) for v in values]


class ServiceErrors:
    """Puts a NexusError next to the field its details name: FIELDS maps a detail path (or its head,
    `test_prompts` of `test_prompts[2].content`) to a field; ITEMS names the items of a list field."""

    FIELDS: dict[str, str] = {}
    ITEMS: dict[str, str] = {}

    def add_service_error(self, exc: NexusError) -> None:
        key = next(iter(exc.details), "") if isinstance(exc.details, dict) else ""
        head = re.split(r"[.\[]", key, maxsplit=1)[0]
        field = self.FIELDS.get(key) or self.FIELDS.get(head) or (head if head in self.fields else None)
        message = exc.message
        if field and key and message.startswith(f"{key}: "):
            problem = message[len(key) + 2:]
            item = re.match(r"\w+\[(\d+)\](.*)", key)
            message = f"{self.ITEMS.get(field, 'item')} {int(item[1]) + 1}{item[2]}: {problem}" if item else problem
        self.add_error(field, message)


def _adapter_choices(user) -> list[tuple[str, str]]:  # noqa: ANN001
    """The user's adapters that llama.cpp can run (those with a GGUF export)."""
    adapters = adapter_list(user=user).exclude(gguf_path="").select_related("base_model", "team").order_by("name", "-version")
    return [(str(a.pk), f"{a.name} v{a.version} ({a.base_model.name}, team {a.team.name})") for a in adapters]


class SessionForm(ServiceErrors, forms.Form):
    name = forms.CharField(max_length=200)
    comparison_type = forms.ChoiceField(choices=ComparisonSession.Type.choices, initial=ComparisonSession.Type.BATCH,
                                        label="Type", help_text="blind: raters see A and B only, until every "
                                                                "comparison is rated")
    adapter = forms.ChoiceField(help_text="compared against its base model (adapters with a GGUF export)")
    prompts = forms.CharField(widget=forms.Textarea(attrs={"rows": 6}), required=False, help_text=PROMPTS_HELP)
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    max_tokens = forms.IntegerField(initial=SAMPLING_DEFAULTS["max_tokens"], min_value=1, max_value=4096)
    temperature = forms.FloatField(initial=SAMPLING_DEFAULTS["temperature"], min_value=0, max_value=2)
    raters_required = forms.IntegerField(initial=1, min_value=1, max_value=50, label="Raters required",
                                         help_text="blind: ratings each comparison needs before the models are named")
    run = forms.BooleanField(required=False, initial=True, label="Run now")

    FIELDS = {"test_prompts": "prompts", "adapter_id": "adapter", "base_model": "adapter",
              "sampling_params.max_tokens": "max_tokens", "sampling_params.temperature": "temperature"}
    ITEMS = {"prompts": "prompt"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        self.fields["adapter"].choices = [("", "Choose an adapter")] + _adapter_choices(user)

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        text = data.get("prompts") or ""
        prompts: list = conversations(text) if data["comparison_type"] == ComparisonSession.Type.CONVERSATION \
            else prompt_lines(text)
        body: dict[str, Any] = {"name": data["name"], "comparison_type": data["comparison_type"],
                                "adapter_id": int(data["adapter"]), "system_prompt": data.get("system_prompt") or "",
                                "sampling_params": {"max_tokens": data["max_tokens"], "temperature": data["temperature"]},
                                "raters_required": data["raters_required"], "run": bool(data.get("run"))}
        if prompts:
            body["test_prompts"] = prompts
        return body


class PromptsForm(ServiceErrors, forms.Form):
    """More prompts for a session, in its own type's format."""

    prompts = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}), help_text=PROMPTS_HELP)
    run = forms.BooleanField(required=False, initial=True, label="Run them now")

    FIELDS = {"test_prompts": "prompts"}
    ITEMS = {"prompts": "prompt"}

    def body(self, session: ComparisonSession) -> dict[str, Any]:
        text = self.cleaned_data["prompts"]
        prompts = conversations(text) if session.comparison_type == ComparisonSession.Type.CONVERSATION \
            else prompt_lines(text)
        return {"prompts": prompts, "run": bool(self.cleaned_data.get("run"))}


class SpeedTestForm(ServiceErrors, forms.Form):
    adapter = forms.ChoiceField(help_text="its base model against base + the adapter, on llama.cpp servers")
    name = forms.CharField(max_length=200, required=False, help_text="blank: Speed: <adapter>")
    prompts = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False,
                              help_text="one a line; blank: three built-in prompts")
    output_lengths = forms.CharField(initial="64, 256", label="Output lengths", help_text="tokens, comma-separated")
    batch_sizes = forms.CharField(initial="1, 4", label="Concurrency", help_text="requests at once, comma-separated")
    num_iterations = forms.IntegerField(initial=10, min_value=1, max_value=200, label="Iterations")
    warmup_iterations = forms.IntegerField(initial=2, min_value=0, max_value=20, label="Warm-up iterations",
                                           help_text="not counted")

    FIELDS = {"adapter_id": "adapter", "test_prompts": "prompts"}
    ITEMS = {"prompts": "prompt", "output_lengths": "value", "batch_sizes": "value"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        self.fields["adapter"].choices = [("", "Choose an adapter")] + _adapter_choices(user)

    def clean_output_lengths(self) -> list[int]:
        return whole_numbers(self.cleaned_data["output_lengths"])

    def clean_batch_sizes(self) -> list[int]:
        return whole_numbers(self.cleaned_data["batch_sizes"])

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        body = {"adapter_id": int(data["adapter"]), "output_lengths": data["output_lengths"],
                "batch_sizes": data["batch_sizes"], "num_iterations": data["num_iterations"],
                "warmup_iterations": data["warmup_iterations"]}
        if data.get("name"):
            body["name"] = data["name"]
        if prompt_lines(data.get("prompts") or ""):
            body["test_prompts"] = prompt_lines(data["prompts"])
        return body


class JudgeForm(ServiceErrors, TeacherFieldsMixin):
    """A judge over a session: a saved teacher connection, a running deployment or a model typed in."""

    session = forms.ChoiceField(label="Session")
    connection = forms.ChoiceField(required=False, label="Judge", help_text="a saved connection, or one given below")
    provider = forms.ChoiceField(choices=Provider.choices, initial=Provider.OPENAI)
    deployment = forms.ChoiceField(required=False, help_text="provider “deployed”: a running deployment of the team")
    criteria = forms.MultipleChoiceField(choices=[(c, c) for c in CRITERIA], initial=list(CRITERIA),
                                         widget=forms.CheckboxSelectMultiple, label="Criteria")
    num_evaluations = forms.IntegerField(initial=1, min_value=1, max_value=5, label="Rounds",
                                         help_text="each pair judged this many times in both orders")
    field_order = ["session", "connection", "provider", "deployment", "model", "base_url", "api_key", "criteria",
                   "num_evaluations"]

    FIELDS = {"session_id": "session", "judge_config.connection_id": "connection",
              "judge_config.deployment_id": "deployment", "judge_config.provider": "provider",
              "judge_config.model": "model", "judge_config.base_url": "base_url", "judge_config.api_key": "api_key",
              "judge_config": "model", "evaluation_criteria": "criteria"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        self.fields["session"].choices = [("", "Choose a session")] + [
            (str(s.pk), f"{s.name} (#{s.pk}, {s.get_comparison_type_display().lower()}, {s.status})")
            for s in session_list(user=user)[:200]]
        self.fields["connection"].choices = [("", "Give a judge below")] + [
            (str(c.pk), f"{c.name} ({c.label})") for c in teacher_connection_list(user=user)]
        self.fields["deployment"].choices = [("", "Choose a running deployment")] + [
            (str(d.pk), d.name) for d in deployment_list(user=user).filter(status=Deployment.Status.RUNNING)]
        self.criteria_help = CRITERIA_DESCRIPTIONS

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        if data.get("connection"):
            judge: dict[str, Any] = {"connection_id": int(data["connection"])}
        elif data.get("provider") == Provider.DEPLOYED:
            judge = {"provider": Provider.DEPLOYED,
                     "deployment_id": int(data["deployment"]) if (data.get("deployment") or "").isdecimal() else None}
        else:
            judge = self.teacher_raw()
        return {"session_id": int(data["session"]), "judge_config": judge,
                "evaluation_criteria": list(data["criteria"]), "num_evaluations": data["num_evaluations"]}
