"""Distillation writes: teacher connections, templates, jobs (create, cancel, fail), a person's
review of an item, and approval into a dataset. The run itself is in runner.py."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.http import Http404
from django.utils import timezone
from django.utils.text import slugify

from datasets_app.distillation.engine.hosts import HostRefused, check_teacher_address, parse_allowed_hosts
from datasets_app.distillation.engine.modes import MODES
from datasets_app.distillation.engine.pricing import estimate_cost, price_for
from datasets_app.distillation.engine.templates import TemplateError, expand, render, template_fields
from datasets_app.distillation.engine.teachers import teacher_client
from datasets_app.distillation.engine.types import ConnectionCheck, TeacherSpec
from datasets_app.distillation.jobs import DISTILLATION
from datasets_app.distillation.models import (
    DistillationItem,
    DistillationJob,
    DistillationTeacher,
    DistillationTemplate,
    Provider,
    TeacherConnection,
)
from datasets_app.models import Dataset
from nexus.control import control_send
from nexus.errors import NexusError
from nexus.fields import bad, require
from nexus.fields import number as _number
from nexus.fields import text as _text
from nexus.fields import unknown as _unknown
from nexus.jobs import enqueue, event, transition
from nexus.models import Team
from nexus.quotas import quota_check
from nexus.redact import public_text
from nexus.secrets import secret_decrypt, secret_encrypt

S = DistillationJob.Status
OUTPUT_FORMATS = ("alpaca", "sharegpt", "chatml")
MULTI_TEACHER = ("best", "round_robin")
TEACHER_KEYS = {"provider", "model", "api_key", "base_url", "temperature", "max_tokens", "deployment_id",
                "connection_id", "name", "timeout_s"}
JOB_KEYS = {"name", "team", "teacher_config", "teacher_configs", "judge_config", "multi_teacher", "prompts_config",
            "system_prompt", "quality_threshold", "quality", "batch_size", "rate_limit", "output_format", "mode",
            "pivot_language", "description"}
PROMPT_KEYS = {"prompts", "dataset_id", "template_id", "template", "variables", "num_examples", "include_reasoning",
               "seed"}
DEFAULTS = {"batch_size": 5, "rate_limit": 60, "quality_threshold": 0.0, "output_format": "alpaca", "temperature": 0.7,
            "max_tokens": 2048}


# -- teachers ---------------------------------------------------------------------------------------


@dataclass
class TeacherInput:
    """A checked teacher: the fields of TeacherFields, with the key already encrypted."""

    provider: str
    model: str
    base_url: str = ""
    deployment: Any = None
    api_key_encrypted: str = ""
    key_last4: str = ""
    temperature: float = 0.7
    max_tokens: int = 2048
    connection: TeacherConnection | None = None

    def fields(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "base_url": self.base_url,
                "deployment": self.deployment, "api_key_encrypted": self.api_key_encrypted,
                "key_last4": self.key_last4, "temperature": self.temperature, "max_tokens": self.max_tokens}


def allowed_hosts() -> list[str]:
    return parse_allowed_hosts(settings.NEXUS_TEACHER_ALLOWED_HOSTS)


def check_address(provider: str, base_url: str, path: str) -> None:
    """Outbound addresses are the operator's choice (NEXUS_TEACHER_ALLOWED_HOSTS); deployed models
    are always allowed. A refusal names the field it came from."""
    if provider == Provider.DEPLOYED:
        return
    try:
        check_teacher_address(provider, base_url, allowed_hosts())
    except HostRefused as exc:
        message = exc.message.removeprefix("teacher_config.base_url: ")
        raise bad(f"{path}.base_url", message, code="address_not_allowed") from exc


def teacher_parse(*, team: Team, user, raw: Any, path: str = "teacher_config") -> TeacherInput:
    """A teacher as a job or a connection gives it: {"provider", "model", "api_key", "base_url",
    "temperature", "max_tokens"} or {"provider": "deployed", "deployment_id"}, or {"connection_id"}
    (a saved connection; temperature and max_tokens may be overridden). Without `provider`, a
    "claude-..." model is Anthropic's, "deployed:<id>" (the design's form) a deployment, else OpenAI."""
    if not isinstance(raw, dict):
        raise bad(path, "must be an object such as {\"provider\": \"openai\", \"model\": \"gpt-4o-mini\", \"api_key\": \"...\"}")
    _unknown(raw, TEACHER_KEYS, path)
    if raw.get("connection_id") is not None:
        from datasets_app.distillation.selectors import teacher_connection_get

        cid = raw["connection_id"]
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise bad(f"{path}.connection_id", f"must be the id of a saved teacher connection, got {cid!r}")
        try:
            conn = teacher_connection_get(user=user, pk=cid)
        except Http404:
            raise bad(f"{path}.connection_id", f"no saved teacher connection #{cid} in your teams") from None
        if conn.team_id != team.pk:
            raise bad(f"{path}.connection_id", f"connection #{cid} belongs to another team")
        return TeacherInput(provider=conn.provider, model=conn.model, base_url=conn.base_url, deployment=conn.deployment,
                            api_key_encrypted=conn.api_key_encrypted, key_last4=conn.key_last4,
                            temperature=_number(raw, "temperature", path, lo=0, hi=2, default=conn.temperature),
                            max_tokens=_number(raw, "max_tokens", path, lo=1, hi=200_000, default=conn.max_tokens,
                                               integer=True), connection=conn)
    model = _text(raw, "model", path, max_len=200).strip()
    provider = raw.get("provider")
    deployment_id = raw.get("deployment_id")
    if provider is None:
        if model.startswith("deployed:"):
            provider, deployment_id = Provider.DEPLOYED, model.removeprefix("deployed:")
            deployment_id = int(deployment_id) if deployment_id.isdecimal() else deployment_id
            model = ""
        else:
            provider = Provider.ANTHROPIC if model.startswith("claude") else Provider.OPENAI
    if provider not in Provider.values:
        raise bad(f"{path}.provider", f"must be one of {', '.join(Provider.values)}, got {provider!r}")
    temperature = _number(raw, "temperature", path, lo=0, hi=2, default=DEFAULTS["temperature"])
    max_tokens = _number(raw, "max_tokens", path, lo=1, hi=200_000, default=DEFAULTS["max_tokens"], integer=True)
    base_url = _text(raw, "base_url", path, max_len=500).strip()
    api_key = _text(raw, "api_key", path, max_len=500).strip()
    deployment = None
    if provider == Provider.DEPLOYED:
        from deployments_app.models import Deployment

        if isinstance(deployment_id, bool) or not isinstance(deployment_id, int):
            raise bad(f"{path}.deployment_id", f"must be the id of one of the team's deployments, got {deployment_id!r}")
        deployment = Deployment.objects.filter(pk=deployment_id, team=team).first()
        if deployment is None:
            raise bad(f"{path}.deployment_id", f"no deployment #{deployment_id} in team '{team.name}'")
        if api_key or base_url:
            raise bad(f"{path}.api_key" if api_key else f"{path}.base_url",
                      "a deployed model needs no key or address (Nexus knows both)")
        model = model or deployment.name
    else:
        if not model:
            raise bad(f"{path}.model", "is required (e.g. \"gpt-4o-mini\" or \"claude-haiku-4-5\")")
        if not api_key and not base_url:
            raise bad(f"{path}.api_key", f"is required for {provider}'s own API")
        check_address(provider, base_url, path)
    return TeacherInput(provider=provider, model=model, base_url=base_url, deployment=deployment,
                        api_key_encrypted=secret_encrypt(api_key), key_last4=api_key[-4:] if len(api_key) >= 8 else "",
                        temperature=temperature, max_tokens=max_tokens)


def teacher_spec(row, *, timeout_s: float = 120.0) -> TeacherSpec:
    """A teacher row (connection or a job's teacher) as the engine calls it; a deployed model is
    reached at its running server."""
    base_url, api_key = row.base_url, secret_decrypt(row.api_key_encrypted)
    if row.provider == Provider.DEPLOYED:
        from deployments_app.proxy import deployment_endpoint

        if row.deployment is None:
            raise NexusError("The deployment this teacher used was deleted.", code="teacher_gone")
        base_url, api_key = deployment_endpoint(deployment=row.deployment)
    return TeacherSpec(provider=row.provider, model=row.model, api_key=api_key, base_url=base_url,
                       temperature=row.temperature, max_tokens=row.max_tokens, timeout_s=timeout_s, label=row.label)


def teacher_check(*, row) -> ConnectionCheck:
    """One cheap call that says whether the key, the address and the model work."""
    try:
        check_address(row.provider, row.base_url, "teacher_config")
        spec = teacher_spec(row, timeout_s=15.0)
    except NexusError as exc:
        return ConnectionCheck(ok=False, message=exc.message, problem="address" if "base_url" in exc.message else "other")
    return teacher_client(spec).check()


@transaction.atomic
def teacher_connection_create(*, team: Team, user, raw: dict) -> TeacherConnection:
    name = _text(raw, "name", "", max_len=200).strip()
    if not name:
        raise bad("name", "is required: a name the team will know this connection by")
    if TeacherConnection.objects.filter(team=team, name=name).exists():
        raise bad("name", f"team '{team.name}' already has a connection named '{name}'", status=409, code="exists")
    parsed = teacher_parse(team=team, user=user, raw={k: v for k, v in raw.items() if k not in ("name", "team")},
                           path="teacher_config")
    conn = TeacherConnection(team=team, created_by=user, name=name, **parsed.fields())
    conn.full_clean()
    conn.save()
    return conn


@transaction.atomic
def teacher_connection_update(*, connection: TeacherConnection, user, raw: dict) -> TeacherConnection:
    """Change a connection; a key is replaced only when a new one is given."""
    merged = {"provider": connection.provider, "model": connection.model, "base_url": connection.base_url,
              "temperature": connection.temperature, "max_tokens": connection.max_tokens}
    if connection.deployment_id:
        merged["deployment_id"] = connection.deployment_id
    merged.update({k: v for k, v in raw.items() if k not in ("name", "team")})
    keep_key = not merged.get("api_key")
    if keep_key and merged.get("provider") != Provider.DEPLOYED:
        merged["api_key"] = secret_decrypt(connection.api_key_encrypted) or None
    parsed = teacher_parse(team=connection.team, user=user, raw={k: v for k, v in merged.items() if v is not None},
                           path="teacher_config")
    if "name" in raw:
        name = _text(raw, "name", "", max_len=200).strip()
        if not name:
            raise bad("name", "may not be blank")
        if TeacherConnection.objects.filter(team=connection.team, name=name).exclude(pk=connection.pk).exists():
            raise bad("name", f"another connection is named '{name}'", status=409, code="exists")
        connection.name = name
    for key, value in parsed.fields().items():
        setattr(connection, key, value)
    connection.last_check = {}
    connection.save()
    return connection


def teacher_connection_test(*, connection: TeacherConnection) -> ConnectionCheck:
    result = teacher_check(row=connection)
    TeacherConnection.objects.filter(pk=connection.pk).update(last_check={
        "ok": result.ok, "message": result.message, "problem": result.problem, "latency_ms": result.latency_ms,
        "at": timezone.now().isoformat()})
    return result


def teacher_connection_delete(*, connection: TeacherConnection) -> None:
    connection.delete()  # jobs keep their own copies


def template_delete(*, template: DistillationTemplate) -> None:
    template.delete()  # jobs keep the template they were made from in their config


# -- templates --------------------------------------------------------------------------------------


def template_check(*, prompt: str, variables: Any, system_prompt: str = "") -> dict[str, list[str]]:
    if not isinstance(variables, dict) or not all(isinstance(k, str) for k in variables):
        raise bad("variables", "must be an object of name -> list of values")
    clean: dict[str, list[str]] = {}
    for name, values in variables.items():
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise bad(f"variables.{name}", "must be a list of strings")
        clean[name] = [v for v in values if v.strip()]
    for key, text in (("prompt", prompt), ("system_prompt", system_prompt)):
        try:
            names = template_fields(text, where=key)
        except TemplateError as exc:
            raise bad(key, str(exc).removeprefix(f"{key}: ")) from exc
        if key == "prompt" and not names and not text.strip():
            raise bad("prompt", "is required")
        missing = [n for n in names if not clean.get(n)]
        if missing and key == "prompt":
            raise bad(f"variables.{missing[0]}", f"the prompt uses {{{missing[0]}}} but no values are given for it")
    return clean


@transaction.atomic
def template_create(*, team: Team, user, raw: dict) -> DistillationTemplate:
    _unknown(raw, {"name", "slug", "description", "system_prompt", "prompt", "variables", "team"}, "")
    require(raw, ["name", "prompt"])
    name = _text(raw, "name", "", max_len=200).strip()
    if not name:
        raise bad("name", "is required")
    prompt = _text(raw, "prompt", "")
    system_prompt = _text(raw, "system_prompt", "")
    variables = template_check(prompt=prompt, variables=raw.get("variables") or {}, system_prompt=system_prompt)
    slug = slugify(_text(raw, "slug", "", max_len=100) or name)[:100] or "template"
    from datasets_app.distillation.engine.templates import BUILTIN_TEMPLATES

    if slug in BUILTIN_TEMPLATES or DistillationTemplate.objects.filter(team=team, slug=slug).exists():
        raise bad("slug", f"'{slug}' is taken (a built-in or another of the team's templates)", status=409, code="exists")
    row = DistillationTemplate(team=team, created_by=user, slug=slug, name=name,
                               description=_text(raw, "description", ""), system_prompt=system_prompt, prompt=prompt,
                               variables=variables)
    row.full_clean()
    row.save()
    return row


def template_preview(*, prompt: str, variables: Any, system_prompt: str = "", limit: int = 5, seed: int = 0) -> dict:
    """What a template makes: the first prompts of its combinations, and how many there are."""
    clean = template_check(prompt=prompt, variables=variables, system_prompt=system_prompt)
    used = template_fields(prompt)
    combos = 1
    for name in used:
        combos *= len(clean[name])
    rendered = expand(prompt, clean, limit=limit, seed=seed)
    sample = rendered[0][1] if rendered else {}
    try:
        system = render(system_prompt, sample) if system_prompt else ""
    except TemplateError as exc:
        raise bad("system_prompt", str(exc)) from exc
    return {"prompts": [p for p, _ in rendered], "variables": [v for _, v in rendered], "system_prompt": system,
            "combinations": combos, "fields": used}


# -- jobs ---------------------------------------------------------------------------------------------


@dataclass
class JobRequest:
    """A checked job request."""

    name: str
    teachers: list[TeacherInput]
    judge: TeacherInput | None
    sources: list[dict[str, Any]]  # prompt, input, reference, system, variables, source_index
    to_generate: int
    config: dict[str, Any] = field(default_factory=dict)


def _prompts_from_list(raw: Any, limit: int) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise bad("prompts_config.prompts", "must be a non-empty list of prompts (strings, or objects with \"prompt\")")
    out = []
    for i, item in enumerate(raw):
        path = f"prompts_config.prompts[{i}]"
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise bad(path, f"must be a string or an object with \"prompt\", got {type(item).__name__}")
        _unknown(item, {"prompt", "instruction", "input", "system", "output"}, path)
        prompt = _text(item, "prompt" if "prompt" in item else "instruction", path).strip()
        if not prompt:
            raise bad(path, "is empty")
        out.append({"prompt": prompt, "input": _text(item, "input", path), "system": _text(item, "system", path),
                    "reference": _text(item, "output", path)})
    return out[:limit]


def _prompts_from_dataset(*, user, team: Team, dataset_id: Any, limit: int, seed: int) -> tuple[list[dict], Dataset]:
    from datasets_app.selectors import dataset_get
    from datasets_app.services import dataset_load_records

    if isinstance(dataset_id, bool) or not isinstance(dataset_id, int):
        raise bad("prompts_config.dataset_id", f"must be the id of one of the team's datasets, got {dataset_id!r}")
    try:
        dataset = dataset_get(user=user, pk=dataset_id)
    except Http404:
        raise bad("prompts_config.dataset_id", f"no dataset #{dataset_id} in your teams") from None
    if dataset.team_id != team.pk:
        raise bad("prompts_config.dataset_id", f"dataset #{dataset_id} belongs to another team")
    if dataset.status != Dataset.Status.READY:
        raise bad("prompts_config.dataset_id", f"dataset '{dataset.name}' is not ready (status: {dataset.status})",
                  code="dataset_not_ready", status=409)
    out = []
    for record in dataset_load_records(dataset=dataset):
        messages = record["messages"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        if users:
            out.append({"prompt": users[-1], "input": "", "system": system, "reference": answers[-1] if answers else "",
                        "source_index": record.get("source_index")})
    if not out:
        raise bad("prompts_config.dataset_id", f"dataset '{dataset.name}' has no record with a user prompt")
    if len(out) > limit:
        import random

        random.Random(seed).shuffle(out)
        out = sorted(out[:limit], key=lambda s: s.get("source_index") or 0)
    return out, dataset


def _template_of(*, user, team: Team, prompts: dict):
    """A saved template (`template_id`: a built-in or the team's) or one given inline (`template`)."""
    from datasets_app.distillation.engine.templates import PromptTemplate
    from datasets_app.distillation.selectors import template_get

    if prompts.get("template_id") is not None:
        try:
            return template_get(user=user, team=team, template_id=prompts["template_id"])
        except Http404:
            raise bad("prompts_config.template_id", f"no template {prompts['template_id']!r} (a built-in one or "
                                                    f"one of team '{team.name}')") from None
    raw = prompts["template"]
    path = "prompts_config.template"
    if not isinstance(raw, dict):
        raise bad(path, "must be an object: {\"prompt\": \"... {topic} ...\", \"variables\": {\"topic\": [...]}, "
                        "\"system_prompt\": \"...\"}")
    _unknown(raw, {"name", "description", "prompt", "variables", "system_prompt"}, path)
    require(raw, ["prompt"], path)
    prompt, system_prompt = _text(raw, "prompt", path), _text(raw, "system_prompt", path)
    try:
        variables = template_check(prompt=prompt, variables=raw.get("variables") or {}, system_prompt=system_prompt)
    except NexusError as exc:
        raise bad(f"{path}.{next(iter(exc.details))}", exc.message.split(": ", 1)[-1]) from exc
    return PromptTemplate(id="inline", name=_text(raw, "name", path, max_len=200) or "Inline template",
                          description=_text(raw, "description", path), system_prompt=system_prompt, prompt=prompt,
                          variables=variables)


def _check_running(teacher: TeacherInput, path: str) -> None:
    """A job's deployed teacher has to be up (or coming up): a stopped one would fail the run."""
    from deployments_app.models import Deployment

    d = teacher.deployment
    if d is not None and d.status not in (Deployment.Status.STARTING, Deployment.Status.RUNNING):
        raise bad(f"{path}.deployment_id", f"deployment '{d.name}' is {d.status}: start it first", code="not_running",
                  status=409)


def job_request_parse(*, team: Team, user, body: Any) -> JobRequest:
    """Check a job request (the design's body, section 7.5) down to the field; nothing is saved."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    _unknown(body, JOB_KEYS, "")
    require(body, ["name", "prompts_config"])
    name = _text(body, "name", "", max_len=200).strip()
    if not name:
        raise bad("name", "is required")
    if ("teacher_config" in body) == ("teacher_configs" in body):
        raise bad("teacher_config", "give one teacher as teacher_config, or several as teacher_configs (not both)")
    if "teacher_configs" in body:
        raw_teachers = body["teacher_configs"]
        if not isinstance(raw_teachers, list) or not raw_teachers or len(raw_teachers) > 8:
            raise bad("teacher_configs", "must be a list of 1 to 8 teachers")
        teachers = [teacher_parse(team=team, user=user, raw=t, path=f"teacher_configs[{i}]")
                    for i, t in enumerate(raw_teachers)]
    else:
        teachers = [teacher_parse(team=team, user=user, raw=body["teacher_config"])]
    for i, t in enumerate(teachers):
        _check_running(t, f"teacher_configs[{i}]" if "teacher_configs" in body else "teacher_config")
    multi = body.get("multi_teacher", "best")
    if multi not in MULTI_TEACHER:
        raise bad("multi_teacher", f"must be one of {', '.join(MULTI_TEACHER)}, got {multi!r}")
    threshold = _number(body, "quality_threshold", "", lo=0, hi=1, default=DEFAULTS["quality_threshold"])
    best_of = len(teachers) > 1 and multi == "best"
    judge = None
    if body.get("judge_config") is not None:
        judge = teacher_parse(team=team, user=user, raw=body["judge_config"], path="judge_config")
        _check_running(judge, "judge_config")
    elif threshold > 0 or best_of:
        judge = teachers[0]
    mode = body.get("mode", "response")
    if mode not in MODES:
        raise bad("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
    output_format = body.get("output_format", DEFAULTS["output_format"])
    if output_format not in OUTPUT_FORMATS:
        raise bad("output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    quality = body.get("quality") or {}
    if not isinstance(quality, dict):
        raise bad("quality", "must be an object such as {\"min_words\": 3, \"check_language\": true}")
    _unknown(quality, {"min_words", "check_language", "near_threshold"}, "quality")
    quality_config = {"min_words": _number(quality, "min_words", "quality", lo=0, hi=10_000, default=3, integer=True),
                      "check_language": bool(quality.get("check_language", True))}
    if "near_threshold" in quality:
        quality_config["near_threshold"] = _number(quality, "near_threshold", "quality", lo=0.5, hi=1, default=0.85)

    prompts = body.get("prompts_config")
    if not isinstance(prompts, dict):
        raise bad("prompts_config", "is required: {\"prompts\": [...]}, {\"dataset_id\": N} or {\"template_id\": ...}")
    _unknown(prompts, PROMPT_KEYS, "prompts_config")
    given = [k for k in ("prompts", "dataset_id", "template_id", "template") if prompts.get(k) is not None]
    if len(given) != 1:
        raise bad("prompts_config", "give exactly one source of prompts: prompts, dataset_id, template_id or an "
                                    "inline template {\"prompt\", \"variables\", \"system_prompt\"}")
    cap = settings.NEXUS_DISTILLATION_MAX_EXAMPLES
    num_examples = _number(prompts, "num_examples", "prompts_config", lo=1, hi=cap, default=None, integer=True)
    seed = _number(prompts, "seed", "prompts_config", lo=0, hi=2**31, default=0, integer=True)
    include_reasoning = prompts.get("include_reasoning", False)
    if not isinstance(include_reasoning, bool):
        raise bad("prompts_config.include_reasoning", f"must be true or false, got {include_reasoning!r}")
    system_prompt = _text(body, "system_prompt", "")
    source: dict[str, Any] = {}
    to_generate = 0
    if mode != "response" and given[0] != "dataset_id":
        raise bad("mode", f"'{mode}' augments an existing dataset: give prompts_config.dataset_id")
    if given[0] == "prompts":
        sources = _prompts_from_list(prompts["prompts"], num_examples or cap)
        source = {"kind": "prompts"}
    elif given[0] == "dataset_id":
        sources, dataset = _prompts_from_dataset(user=user, team=team, dataset_id=prompts["dataset_id"],
                                                 limit=num_examples or cap, seed=seed)
        source = {"kind": "dataset", "dataset_id": dataset.pk, "dataset_name": dataset.name}
    else:
        template = _template_of(user=user, team=team, prompts=prompts)
        variables = dict(template.variables)
        given_vars = prompts.get("variables") or {}
        if not isinstance(given_vars, dict):
            raise bad("prompts_config.variables", "must be an object of name -> value or list of values")
        variables.update(given_vars)
        try:
            variables = template_check(prompt=template.prompt, variables=variables, system_prompt=template.system_prompt)
        except NexusError as exc:
            raise bad(f"prompts_config.{next(iter(exc.details))}", exc.message.split(": ", 1)[-1]) from exc
        wanted = num_examples or 100
        try:
            rendered = expand(template.prompt, variables, limit=wanted, seed=seed)
        except TemplateError as exc:
            raise bad(f"prompts_config.{given[0]}", str(exc)) from exc
        sources = []
        for text, values in rendered:
            system = render(template.system_prompt, values) if template.system_prompt else ""
            sources.append({"prompt": text, "input": "", "system": system, "reference": "", "variables": values})
        to_generate = max(0, wanted - len(sources))
        system_prompt = system_prompt or (sources[0]["system"] if sources and "{" not in template.system_prompt else
                                          system_prompt)
        source = {"kind": "template", "template_id": template.id, "template_name": template.name,
                  "variables": variables,
                  # what the teacher needs to write more prompts like these when the combinations run out
                  "template": {"id": template.id, "name": template.name, "description": template.description,
                               "system_prompt": template.system_prompt, "prompt": template.prompt,
                               "variables": variables}}
    if num_examples is None:
        num_examples = len(sources) + to_generate
    config = {
        "source": source, "num_examples": num_examples, "include_reasoning": include_reasoning, "seed": seed,
        "system_prompt": system_prompt, "quality_threshold": threshold, "quality": quality_config,
        "batch_size": _number(body, "batch_size", "", lo=1, hi=64, default=DEFAULTS["batch_size"], integer=True),
        "rate_limit": _number(body, "rate_limit", "", lo=1, hi=100_000, default=DEFAULTS["rate_limit"], integer=True),
        "multi_teacher": multi if len(teachers) > 1 else "", "mode": mode,
        "pivot_language": _text(body, "pivot_language", "", max_len=50) or "French",
        "description": _text(body, "description", "", max_len=5000),
    }
    return JobRequest(name=name, teachers=teachers, judge=judge, sources=sources, to_generate=to_generate,
                      config=config)


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # about 4 characters a token for English text (OpenAI's rule of thumb)


def job_estimate(*, request: JobRequest) -> dict[str, Any]:
    """Requests, tokens and cost before starting: per teacher and for the judge, with low, expected
    and high bounds (high: every answer as long as max_tokens). Tokens are approximate (4 characters
    a token) because the providers' tokenizers are theirs."""
    from datasets_app.distillation.selectors import price_table

    prices = price_table()
    n_prompts = len(request.sources) + request.to_generate
    per_prompt = [_approx_tokens(s["prompt"] + s["input"] + (s["system"] or request.config["system_prompt"]))
                  for s in request.sources] or [50]
    avg_in = sum(per_prompt) / len(per_prompt)
    steps = {"response": 1, "rephrase": 1, "expand": 1, "negative": 1, "back_translate": 2}[request.config["mode"]]
    best_of = request.config["multi_teacher"] == "best"
    rows, total = [], {"low": 0.0, "expected": 0.0, "high": 0.0}
    unknown = []
    for i, t in enumerate(request.teachers):
        n = len(request.teachers)
        share = n_prompts if best_of or n == 1 else n_prompts // n + (1 if i < n_prompts % n else 0)  # round robin
        requests_ = share * steps
        price = price_for(t.model, prices)
        cost = estimate_cost(num_requests=requests_, prompt_tokens_avg=avg_in, max_tokens=t.max_tokens, price=price) \
            if price else None
        if cost:
            for k in total:
                total[k] += cost[k]
        else:
            unknown.append(t.model)
        rows.append({"role": "teacher", "teacher": f"{t.provider}:{t.model}", "requests": requests_, "cost_usd": cost,
                     "price_per_mtok": list(price) if price else None})
    if request.judge is not None:
        judged = n_prompts * (len(request.teachers) if best_of else 1)
        price = price_for(request.judge.model, prices)
        avg_answer = min(request.teachers[0].max_tokens, 400)
        cost = estimate_cost(num_requests=judged, prompt_tokens_avg=avg_in + avg_answer + 250, max_tokens=300,
                             price=price) if price else None
        if cost:
            for k in total:
                total[k] += cost[k]
        else:
            unknown.append(request.judge.model)
        rows.append({"role": "judge", "teacher": f"{request.judge.provider}:{request.judge.model}",
                     "requests": judged, "cost_usd": cost, "price_per_mtok": list(price) if price else None})
    requests_total = sum(r["requests"] for r in rows) + (-(-request.to_generate // 20) if request.to_generate else 0)
    return {"prompts": n_prompts, "prompts_to_generate": request.to_generate, "requests": requests_total,
            "prompt_tokens_avg": round(avg_in, 1), "per_teacher": rows,
            "cost_usd": {k: round(v, 4) for k, v in total.items()} if not unknown or len(unknown) < len(rows) else None,
            "unpriced_models": sorted(set(unknown)),
            "minutes_at_rate_limit": round(requests_total / request.config["rate_limit"], 1),
            "note": "tokens are estimated at about 4 characters a token; prices from the operator's price table"}


@transaction.atomic
def distillation_job_create(*, team: Team, user, body: dict) -> DistillationJob:
    request = job_request_parse(team=team, user=user, body=body)
    quota_check(team=team, kind="active_distillations")
    job = DistillationJob.objects.create(
        team=team, created_by=user, name=request.name, mode=request.config["mode"], config=request.config,
        output_format=body.get("output_format", DEFAULTS["output_format"]), num_prompts=len(request.sources),
        prompts_to_generate=request.to_generate)
    teachers = [DistillationTeacher.objects.create(job=job, position=i, role=DistillationTeacher.Role.TEACHER,
                                                   connection=t.connection, **t.fields())
                for i, t in enumerate(request.teachers)]
    if request.judge is not None:
        DistillationTeacher.objects.create(job=job, position=0, role=DistillationTeacher.Role.JUDGE,
                                           connection=request.judge.connection, **request.judge.fields())
    items = items_for(job=job, teachers=teachers, sources=request.sources, first_group=0)
    DistillationItem.objects.bulk_create(items, batch_size=2000)
    DistillationJob.objects.filter(pk=job.pk).update(num_items=len(items))
    job.num_items = len(items)
    names = ", ".join(t.label for t in teachers)
    event(DISTILLATION, job.pk, f"Created: {len(request.sources)} prompts"
          + (f" (+{request.to_generate} for the teacher to write)" if request.to_generate else "")
          + f" for {names}; at most {request.config['batch_size']} requests at once and {request.config['rate_limit']} a minute")
    enqueue(DISTILLATION, job.pk)
    return job


def items_for(*, job: DistillationJob, teachers: list[DistillationTeacher], sources: list[dict],
              first_group: int) -> list[DistillationItem]:
    best_of = job.config.get("multi_teacher") == "best"
    items = []
    for n, source in enumerate(sources):
        group = first_group + n
        chosen = teachers if best_of else [teachers[group % len(teachers)]]
        for teacher in chosen:
            items.append(DistillationItem(job=job, group=group, teacher=teacher, prompt=source["prompt"],
                                          input=source.get("input", ""), reference=source.get("reference", ""),
                                          system=source.get("system", ""), variables=source.get("variables") or {},
                                          source_index=source.get("source_index")))
    return items


@transaction.atomic
def distillation_job_cancel(*, job: DistillationJob) -> DistillationJob:
    """A queued job is cancelled at once; a running one is asked to stop (within a few seconds)."""
    job = DistillationJob.objects.select_for_update().get(pk=job.pk)
    if job.status in DistillationJob.ENDED:
        raise NexusError(f"The job has already ended ({job.status}).", code="not_active", status_code=409)
    if job.status == S.QUEUED:
        transition(DISTILLATION, job.pk, to=S.CANCELLED, frm=[S.QUEUED], message="Cancelled before it started",
                   cancel_requested=True, completed_at=timezone.now())
    else:
        DistillationJob.objects.filter(pk=job.pk).update(cancel_requested=True, updated_at=timezone.now())
        event(DISTILLATION, job.pk, "Cancel requested; stopping after the answers on their way")
        transaction.on_commit(lambda: control_send(kind=DISTILLATION.name, job_id=job.pk, command="stop"))
    job.refresh_from_db()
    return job


def distillation_job_fail(*, job_id: int, error: str) -> None:
    transition(DISTILLATION, job_id, to=S.FAILED, frm=[S.QUEUED, S.RUNNING], message=public_text(error), level="error",
               error_message=public_text(error), completed_at=timezone.now())


REVIEW = {"accept": DistillationItem.Status.ACCEPTED, "reject": DistillationItem.Status.REJECTED, "reset": ""}


@transaction.atomic
def distillation_item_review(*, job: DistillationJob, item_id: int, user, decision: str) -> DistillationItem:
    """A person accepts or rejects an item (or resets it to the filters' verdict)."""
    if decision not in REVIEW:
        raise bad("decision", f"must be one of {', '.join(REVIEW)}, got {decision!r}")
    item = DistillationItem.objects.select_for_update().filter(job=job, pk=item_id).first()
    if item is None:
        raise Http404("No such item.")
    if item.status == DistillationItem.Status.PENDING:
        raise NexusError("This item has no answer yet; review it when it has one.", code="pending", status_code=409)
    if decision == "accept" and not item.record:
        raise NexusError(f"This item cannot be accepted: it has no usable answer ({item.reason}: {item.detail}).",
                         code="no_answer", status_code=409)
    before = item.final_status
    item.review = REVIEW[decision]
    item.reviewed_by, item.reviewed_at = (user, timezone.now()) if item.review else (None, None)
    item.save(update_fields=["review", "reviewed_by", "reviewed_at", "updated_at"])
    after = item.final_status
    if before != after:
        delta = 1 if after == DistillationItem.Status.ACCEPTED else -1
        from django.db.models import F

        DistillationJob.objects.filter(pk=job.pk).update(accepted=F("accepted") + delta, rejected=F("rejected") - delta)
    return item


@transaction.atomic
def distillation_job_approve(*, job: DistillationJob, user, name: str = "", description: str = "") -> Dataset:
    """The accepted items become a dataset, through the normal dataset pipeline (validation, dedup,
    token statistics); the dataset records the job it came from."""
    from datasets_app.engine.writers import write_records
    from datasets_app.services import dataset_create

    job = DistillationJob.objects.select_for_update().get(pk=job.pk)
    if job.status in DistillationJob.ACTIVE:
        raise NexusError("The job is still running; approve it when it has ended (or cancel it first).",
                         code="not_finished", status_code=409)
    if job.dataset_id:
        raise NexusError(f"This job was already approved as dataset #{job.dataset_id}.", code="already_approved",
                         status_code=409, details={"dataset_id": job.dataset_id})
    from django.db.models import Q

    accepted = job.items.filter(Q(review=DistillationItem.Status.ACCEPTED) |
                                Q(review="", status=DistillationItem.Status.ACCEPTED)).order_by("group", "teacher_id")
    records = []
    for item in accepted.iterator():
        r = item.record
        user_text = f"{r['instruction']}\n\n{r['input']}" if r.get("input") else r["instruction"]
        messages = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
            {"role": "user", "content": user_text}, {"role": "assistant", "content": r["output"]}]
        records.append({"messages": messages})
    if not records:
        raise NexusError("No item is accepted: accept some in the review first.", code="nothing_accepted",
                         status_code=409)
    data, _ = write_records(records, fmt=job.output_format, file_type="jsonl")
    name = (name or "").strip() or f"{job.name} (distilled)"
    upload = SimpleUploadedFile(f"distillation-{job.pk}.jsonl", data, content_type="application/jsonl")
    dataset = dataset_create(team=job.team, user=user, name=name[:200], file=upload, format=job.output_format,
                             description=description or f"Distilled by job #{job.pk} '{job.name}'")
    teachers = [t.label for t in job.teachers.filter(role=DistillationTeacher.Role.TEACHER)]
    origin = {"kind": "distillation", "job_id": job.pk, "job_name": job.name, "teachers": teachers,
              "mode": job.mode, "records": len(records), "approved_by": getattr(user, "username", None)}
    Dataset.objects.filter(pk=dataset.pk).update(origin=origin)
    dataset.origin = origin
    DistillationJob.objects.filter(pk=job.pk).update(dataset=dataset, approved_at=timezone.now())
    event(DISTILLATION, job.pk, f"Approved: {len(records)} records became dataset #{dataset.pk} '{dataset.name}'",
          data={"dataset_id": dataset.pk})
    return dataset

