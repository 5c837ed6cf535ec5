"""The benchmark pages' forms: the runner (a BenchmarkJob body from ticked suites and shared
settings) and the custom test set editor (the design's JSON, or a dataset's test split). Each
builds the REST API's body and puts a service's refusal next to the field, or suite, it names."""
from __future__ import annotations

import json
import re
from typing import Any

from django import forms

from adapters_app.selectors import adapter_list
from datasets_app.selectors import dataset_list
from evaluation_app.engine.custom import TYPES
from evaluation_app.engine.custom import DESIGN_EXAMPLE
from evaluation_app.forms import ServiceErrors
from nexus.catalog import base_models_visible
from nexus.errors import NexusError
from nexus.teams import team_choices

SHARED = ("num_few_shot", "max_tokens", "temperature", "include_reasoning")
REASONING_SUITES = ("gsm8k",)  # include_reasoning applies to chain-of-thought generation only
DESIGN_CASES = DESIGN_EXAMPLE["test_cases"]
DESIGN_WEIGHTS = {"element_check": 0.4, "similarity": 0.3, "constraint_check": 0.3, "multiple_choice": 0.3}


def _problem(exc: NexusError, key: str) -> str:
    return exc.message[len(key) + 2:] if exc.message.startswith(f"{key}: ") else exc.message


class BenchmarkForm(ServiceErrors, forms.Form):
    """Suites are checkboxes named `suite` with a `samples-<suite>` box each (the page lists them
    from suites_view); what they get wrong lands in `suite_errors`, keyed by suite name."""

    adapter = forms.ChoiceField(required=False, help_text="scored against its base model on the same items; "
                                                          "blank: the base model alone")
    base_model = forms.ChoiceField(required=False, label="Base model", help_text="blank: the adapter's")
    team = forms.ChoiceField(required=False, help_text="without an adapter: the team the job belongs to")
    name = forms.CharField(max_length=200, required=False, help_text="blank: the model and its benchmarks")
    num_few_shot = forms.IntegerField(initial=5, min_value=0, max_value=25, label="Few-shot examples")
    max_tokens = forms.IntegerField(initial=256, min_value=1, max_value=4096, label="Max tokens",
                                    help_text="generated answers (GSM8K, HumanEval, custom sets)")
    temperature = forms.FloatField(initial=0.0, min_value=0, max_value=2)
    include_reasoning = forms.BooleanField(required=False, label="Include reasoning (GSM8K)",
                                           help_text="keep GSM8K's chain of thought in its answers")

    FIELDS = {"adapter_id": "adapter", "base_model": "base_model"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        adapters = adapter_list(user=user).exclude(path="").order_by("name", "-version")
        self.fields["adapter"].choices = [("", "None: the base model only")] + [
            (str(a.pk), f"{a.name} v{a.version} ({a.base_model.name}, team {a.team.name})") for a in adapters]
        self.fields["base_model"].choices = [("", "The adapter's base model")] + [
            (m.name, m.name) for m in base_models_visible(user).exclude(hf_path="").order_by("name")]
        self.fields["team"].choices = team_choices(user)
        self.suite_errors: dict[str, str] = {}
        self.selected: list[str] = []

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        self.selected = [s for s in self.data.getlist("suite") if s] if self.is_bound else []
        if not self.selected:
            self.add_error(None, "Tick at least one benchmark.")
        self.samples: dict[str, int | None] = {}
        for name in self.selected:
            raw = (self.data.get(f"samples-{name}") or "").strip()
            if raw and not (raw.isdecimal() and len(raw) < 12):
                self.suite_errors[name] = f"write a whole number of items, or leave it empty for all; got {raw!r}"
            self.samples[name] = int(raw) if raw.isdecimal() and len(raw) < 12 else None
        if self.suite_errors:
            self.add_error(None, "See the benchmarks marked below.")
        return data

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        benchmarks = []
        for name in self.selected:
            config: dict[str, Any] = {"benchmark_name": name, "num_samples": self.samples[name],
                                      "num_few_shot": data["num_few_shot"], "max_tokens": data["max_tokens"],
                                      "temperature": data["temperature"]}
            if data.get("include_reasoning") and name in REASONING_SUITES:
                config["include_reasoning"] = True
            benchmarks.append(config)
        body: dict[str, Any] = {"benchmarks": benchmarks}
        if data.get("adapter"):
            body["adapter_id"] = int(data["adapter"])
        if data.get("base_model"):
            body["base_model"] = data["base_model"]
        if data.get("name"):
            body["name"] = data["name"]
        return body

    def add_service_error(self, exc: NexusError) -> None:
        """`benchmarks[i].num_samples` goes next to the i-th ticked suite; a shared setting's error
        next to its field."""
        key = next(iter(exc.details), "") if isinstance(exc.details, dict) else ""
        item = re.fullmatch(r"benchmarks\[(\d+)\]\.(\w+)", key)
        if item and int(item[1]) < len(self.selected):
            if item[2] in SHARED:
                self.add_error(item[2], _problem(exc, key))
            else:
                self.suite_errors[self.selected[int(item[1])]] = _problem(exc, key)
                self.add_error(None, "See the benchmarks marked below.")
            return
        super().add_service_error(exc)


class CustomBenchmarkForm(ServiceErrors, forms.Form):
    """The design's custom benchmark: test cases as JSON, a scoring weight per evaluation type."""

    name = forms.CharField(max_length=200, help_text="letters, digits, spaces, '-', '_' or '.'")
    team = forms.ChoiceField(required=False)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    test_cases = forms.CharField(widget=forms.Textarea(attrs={"rows": 16, "class": "code", "spellcheck": "false"}),
                                 label="Test cases (JSON)", initial=json.dumps(DESIGN_CASES, indent=2),
                                 help_text="a list of cases: id, prompt and evaluation_type (element_check, "
                                           "similarity, constraint_check, multiple_choice) with that type's fields")
    element_check_weight = forms.FloatField(initial=DESIGN_WEIGHTS["element_check"], min_value=0, label="element_check")
    similarity_weight = forms.FloatField(initial=DESIGN_WEIGHTS["similarity"], min_value=0, label="similarity")
    constraint_check_weight = forms.FloatField(initial=DESIGN_WEIGHTS["constraint_check"], min_value=0,
                                               label="constraint_check")
    multiple_choice_weight = forms.FloatField(initial=DESIGN_WEIGHTS["multiple_choice"], min_value=0,
                                              label="multiple_choice")
    similarity_threshold = forms.FloatField(initial=0.8, min_value=0, max_value=1, label="Similarity threshold",
                                            help_text="cosine similarity to the reference that counts as a pass")

    FIELDS = {**{f"scoring.{t}.weight": f"{t}_weight" for t in TYPES}, **{f"scoring.{t}": f"{t}_weight" for t in TYPES},
              "scoring.similarity.threshold": "similarity_threshold"}
    ITEMS = {"test_cases": "case"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        self.fields["team"].choices = team_choices(user)

    def clean_test_cases(self) -> Any:
        try:
            return json.loads(self.cleaned_data["test_cases"])
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") \
                from None

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        cases = data["test_cases"]
        present = {c.get("evaluation_type") for c in cases if isinstance(c, dict)} if isinstance(cases, list) else set()
        scoring: dict[str, dict] = {t: {"weight": data[f"{t}_weight"]} for t in TYPES if t in present}
        if "similarity" in scoring:
            scoring["similarity"]["threshold"] = data["similarity_threshold"]
        return {"name": data["name"], "description": data.get("description") or "", "test_cases": cases,
                "scoring": scoring}


class CustomFromDatasetForm(ServiceErrors, forms.Form):
    """A similarity set from a dataset's test split (the dataset's team owns it)."""

    name = forms.CharField(max_length=200)
    dataset = forms.ChoiceField(help_text="its test split: each record's last user turn and the answer to it")
    num_cases = forms.IntegerField(initial=500, min_value=1, max_value=2000, label="Cases", help_text="at most")
    threshold = forms.FloatField(initial=0.8, min_value=0, max_value=1, label="Similarity threshold")
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    FIELDS = {"dataset_id": "dataset"}

    def __init__(self, *args, user, **kwargs):  # noqa: ANN001
        super().__init__(*args, **kwargs)
        self.fields["dataset"].choices = [("", "Choose a dataset")] + [
            (str(d.pk), f"{d.name} (team {d.team.name})") for d in dataset_list(user=user).order_by("name")[:500]]

    def body(self) -> dict[str, Any]:
        data = self.cleaned_data
        body = {"name": data["name"], "dataset_id": int(data["dataset"]), "num_cases": data["num_cases"],
                "threshold": data["threshold"]}
        if data.get("description"):
            body["description"] = data["description"]
        return body
