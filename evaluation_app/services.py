"""Evaluation's writes: comparison sessions (create, add prompts, run, cancel, delete, rate),
LLM-judge runs and speed tests. Requests are checked down to the field before anything is saved;
the work itself runs on a worker through the job kit (evaluation_app/jobs.py, runner.py).

Also the quick base-vs-adapter comparison of the adapter page (`adapter_compare`): one prompt,
nothing stored, the request waits for a CPU worker."""
from __future__ import annotations

import json
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.http import Http404
from django.utils import timezone

from adapters_app.models import AdapterExport, LoRAAdapter
from evaluation_app.engine.judge import CRITERIA, DEFAULT_RUBRIC
from evaluation_app.jobs import COMPARISON, JUDGE, PERFORMANCE
from evaluation_app.models import (
    ACTIVE,
    ENDED,
    ComparisonRating,
    ComparisonSession,
    JudgeRun,
    PerformanceTest,
    PromptComparison,
    RunStatus,
)
from nexus.control import control_send
from nexus.errors import NexusError
from nexus.fields import bad, number, require, string, text, unknown
from nexus.jobs import JobKind, enqueue, event, transition
from nexus.models import BaseModel, Membership, Team
from nexus.quotas import quota_check
from nexus.redact import public_text

COMPARE_WAIT_S = 180
S = RunStatus
SIDE_TYPES = ("base", "adapter", "merged", "deployment")
SAMPLING_DEFAULTS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repeat_penalty": 1.1,
                                     "max_tokens": 256}
SAMPLING_LIMITS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False), "top_p": (0, 1, False), "top_k": (0, 1000, True), "repeat_penalty": (0.5, 2, False),
    "max_tokens": (1, 4096, True), "seed": (0, 2**31 - 1, True)}
SESSION_KEYS = {"name", "description", "comparison_type", "base_model", "adapter_id", "models", "test_prompts",
                "dataset_id", "num_prompts", "system_prompt", "sampling_params", "raters_required", "run", "team"}
PROMPT_MAX_CHARS = 20_000


# -- the two models of a session --------------------------------------------------------------------


def _id(raw: dict, key: str, path: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{path}.{key}" if path else key, f"must be an id (an integer), got {value!r}")
    return value


def _team_adapter(team: Team, adapter_id: int, path: str) -> LoRAAdapter:
    adapter = LoRAAdapter.objects.select_related("base_model").filter(pk=adapter_id, team=team).first()
    if adapter is None:
        raise bad(path, f"no adapter #{adapter_id} in team '{team.name}'")
    return adapter


def _need_gguf(adapter: LoRAAdapter, path: str) -> None:
    if not adapter.gguf_path:
        raise bad(path, f"adapter '{adapter.name}' has no GGUF export yet: export it first (POST "
                        f"/api/v1/finetune/adapters/{adapter.pk}/export with {{\"kind\": \"adapter_gguf\"}})",
                  code="no_gguf", status=409)


def _side_parse(team: Team, raw: Any, path: str) -> dict[str, Any]:
    """One model of a comparison, checked and described: {"type": "base", "base_model": name},
    {"type": "adapter", "adapter_id"}, {"type": "merged", "export_id"} (a verified merged GGUF) or
    {"type": "deployment", "deployment_id"} (running)."""
    if not isinstance(raw, dict):
        raise bad(path, 'must be an object such as {"type": "adapter", "adapter_id": 3}')
    unknown(raw, {"type", "base_model", "adapter_id", "export_id", "deployment_id"}, path)
    kind = raw.get("type")
    if kind not in SIDE_TYPES:
        raise bad(f"{path}.type", f"must be one of {', '.join(SIDE_TYPES)}, got {kind!r}")
    if kind == "base":
        model = _base_model(raw.get("base_model"), f"{path}.base_model", team)
        if not model.gguf_path:
            raise bad(f"{path}.base_model", f"base model '{model.name}' has no GGUF file to run with llama.cpp",
                      code="no_gguf", status=409)
        return {"type": kind, "base_model_id": model.pk, "label": model.name, "is_finetuned": False}
    if kind == "adapter":
        adapter = _team_adapter(team, _id(raw, "adapter_id", path), f"{path}.adapter_id")
        _need_gguf(adapter, f"{path}.adapter_id")
        return {"type": kind, "base_model_id": adapter.base_model_id, "adapter_id": adapter.pk, "is_finetuned": True,
                "label": f"{adapter.base_model.name} + {adapter.name} v{adapter.version}"}
    if kind == "merged":
        export_id = _id(raw, "export_id", path)
        export = AdapterExport.objects.select_related("adapter__base_model").filter(pk=export_id, team=team).first()
        if export is None or export.kind != AdapterExport.Kind.MODEL_GGUF:
            raise bad(f"{path}.export_id", f"no merged-model GGUF export #{export_id} in team '{team.name}'")
        if export.status != AdapterExport.Status.COMPLETED or not export.verified:
            raise bad(f"{path}.export_id", f"export #{export_id} is {export.status}, not a verified GGUF yet",
                      code="no_gguf", status=409)
        adapter = export.adapter
        return {"type": kind, "base_model_id": adapter.base_model_id, "adapter_id": adapter.pk, "export_id": export.pk,
                "is_finetuned": True, "label": f"{adapter.name} v{adapter.version} merged ({export.quantization or 'f16'})"}
    from deployments_app.models import Deployment

    deployment_id = _id(raw, "deployment_id", path)
    deployment = Deployment.objects.filter(pk=deployment_id, team=team).select_related("base_model").first()
    if deployment is None:
        raise bad(f"{path}.deployment_id", f"no deployment #{deployment_id} in team '{team.name}'")
    if deployment.status not in (Deployment.Status.STARTING, Deployment.Status.RUNNING):
        raise bad(f"{path}.deployment_id", f"deployment '{deployment.name}' is {deployment.status}: start it first",
                  code="not_running", status=409)
    arm = deployment.arms.exclude(adapter=None).first()
    return {"type": kind, "base_model_id": deployment.base_model_id, "deployment_id": deployment.pk,
            "adapter_id": arm.adapter_id if arm else None, "is_finetuned": arm is not None,
            "label": f"deployment {deployment.name}"}


def _base_model(value: Any, path: str, team: Team) -> BaseModel:
    """A base model by name (the design's form) or id, of the catalog or of the team."""
    from django.db.models import Q

    visible = BaseModel.objects.filter(Q(team=None) | Q(team=team))
    if isinstance(value, int) and not isinstance(value, bool):
        model = visible.filter(pk=value).first()
    elif isinstance(value, str) and value.strip():
        model = visible.filter(name=value.strip()).first()
    else:
        raise bad(path, f"must be a base model's name or id, got {value!r}")
    if model is None:
        raise bad(path, f"no base model {value!r} (GET /api/v1/finetune/models lists them)")
    return model


def _sides(team: Team, body: dict) -> tuple[list[dict], BaseModel, LoRAAdapter | None]:
    """[base role, finetuned role]: `models` (any two), else the base model and base + `adapter_id`."""
    if body.get("models") is not None:
        raw = body["models"]
        if not isinstance(raw, list) or len(raw) != 2:
            raise bad("models", "must be a list of exactly two models: the first compared as the base, the second "
                                "as the fine-tuned one")
        sides = [_side_parse(team, item, f"models[{i}]") for i, item in enumerate(raw)]
        if json.dumps(sides[0], sort_keys=True) == json.dumps(sides[1], sort_keys=True):
            raise bad("models[1]", "is the same model as models[0]; compare two different ones")
    else:
        require(body, ["adapter_id"])
        adapter = _team_adapter(team, _id(body, "adapter_id", ""), "adapter_id")
        _need_gguf(adapter, "adapter_id")
        base_raw = body.get("base_model") or adapter.base_model.name
        base = _side_parse(team, {"type": "base", "base_model": base_raw}, "base_model")
        if base["base_model_id"] != adapter.base_model_id:
            raise bad("base_model", f"adapter '{adapter.name}' was trained on '{adapter.base_model.name}', not on "
                                    f"{base_raw!r}")
        sides = [base, _side_parse(team, {"type": "adapter", "adapter_id": adapter.pk}, "adapter_id")]
    for role, side in zip(("base", "finetuned"), sides):
        side["role"] = role
    base_model = BaseModel.objects.get(pk=sides[0]["base_model_id"])
    adapter_id = sides[1].get("adapter_id") or sides[0].get("adapter_id")
    adapter = LoRAAdapter.objects.filter(pk=adapter_id).first() if adapter_id else None
    return sides, base_model, adapter


# -- prompts ----------------------------------------------------------------------------------------


def _turns(raw: Any, path: str) -> list[dict[str, str]]:
    """A conversation: a list of messages ({"role": "user"|"assistant", "content"}) or of strings
    (user turns, each answered by the model being compared), or {"messages": [...]}."""
    if isinstance(raw, dict):
        unknown(raw, {"messages"}, path)
        raw, path = raw.get("messages"), f"{path}.messages"
    if not isinstance(raw, list) or not raw:
        raise bad(path, "must be a non-empty list of messages or of user turns")
    turns = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(item, str):
            item = {"role": "user", "content": item}
        if not isinstance(item, dict):
            raise bad(where, 'must be {"role": "user" | "assistant", "content": "..."} or a string')
        role, content = item.get("role"), item.get("content")
        if role not in ("user", "assistant"):
            raise bad(f"{where}.role", f"must be user or assistant, got {role!r} (the system prompt is the session's)")
        if not isinstance(content, str) or not content.strip():
            raise bad(f"{where}.content", "must be a non-empty string")
        turns.append({"role": role, "content": string(content, f"{where}.content", max_len=PROMPT_MAX_CHARS)})
    if turns[0]["role"] != "user":
        raise bad(f"{path}[0].role", "a conversation starts with a user turn")
    if turns[-1]["role"] != "user":
        raise bad(f"{path}[{len(turns) - 1}].role", "a conversation ends with the user turn the models answer")
    return turns


def _prompts_parse(raw: Any, ctype: str, path: str = "test_prompts") -> list[list[dict[str, str]]]:
    """Each prompt as the conversation the models answer: one user turn, or several for
    `conversation` sessions."""
    if not isinstance(raw, list) or not raw:
        raise bad(path, "must be a non-empty list of prompts")
    out = []
    for i, item in enumerate(raw):
        where = f"{path}[{i}]"
        if ctype == ComparisonSession.Type.CONVERSATION:
            out.append(_turns(item, where))
            continue
        if isinstance(item, dict):
            unknown(item, {"prompt"}, where)
            item, where = item.get("prompt"), f"{where}.prompt"
        if not isinstance(item, str) or not item.strip():
            raise bad(where, "must be a non-empty string (a conversation needs comparison_type \"conversation\")")
        out.append([{"role": "user", "content": string(item, where, max_len=PROMPT_MAX_CHARS)}])
    return out


def test_split_of(*, user, team: Team, body: dict):
    """The dataset of `body["dataset_id"]`'s test split (held out from training: 10.8.1). A dataset
    that is itself a test split is used as it is; otherwise its newest test split."""
    from datasets_app.models import Dataset
    from datasets_app.selectors import dataset_get

    dataset_id = _id(body, "dataset_id", "")
    try:
        dataset = dataset_get(user=user, pk=dataset_id)
    except Http404:
        raise bad("dataset_id", f"no dataset #{dataset_id} in your teams") from None
    if dataset.team_id != team.pk:
        raise bad("dataset_id", f"dataset #{dataset_id} belongs to another team")
    if dataset.split != "test":
        split = dataset.splits.filter(split="test").order_by("-created_at").first()
        if split is None:
            raise bad("dataset_id", f"dataset '{dataset.name}' has no test split: split it first (POST "
                                    f"/api/v1/finetune/datasets/{dataset.pk}/split) so the evaluation uses data "
                                    "held out from training", code="no_test_split", status=409)
        dataset = split
    if dataset.status != Dataset.Status.READY:
        raise bad("dataset_id", f"dataset '{dataset.name}' is not ready (status: {dataset.status})",
                  code="dataset_not_ready", status=409)
    return dataset


def _prompts_from_test_split(*, user, team: Team, body: dict, ctype: str) -> tuple[list[list[dict]], Any]:
    """The prompts of a dataset's test split."""
    from datasets_app.services import dataset_load_records

    dataset = test_split_of(user=user, team=team, body=body)
    limit = number(body, "num_prompts", "", lo=1, hi=settings.NEXUS_EVAL_MAX_PROMPTS,
                   default=settings.NEXUS_EVAL_MAX_PROMPTS, integer=True)
    out = []
    for record in dataset_load_records(dataset=dataset):
        turns = [{"role": m["role"], "content": m["content"]} for m in record["messages"]
                 if m["role"] in ("user", "assistant") and m["content"].strip()]
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()  # the reference answer: the models write their own
        if not turns or turns[0]["role"] != "user":
            continue
        out.append(turns if ctype == ComparisonSession.Type.CONVERSATION else [turns[-1]])
        if len(out) >= limit:
            break
    if not out:
        raise bad("dataset_id", f"test split '{dataset.name}' has no record with a user prompt")
    return out, dataset


def _sampling(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad("sampling_params", 'must be an object such as {"temperature": 0.7, "max_tokens": 256}')
    unknown(raw, set(SAMPLING_LIMITS), "sampling_params")
    out = dict(SAMPLING_DEFAULTS)
    for key, (lo, hi, integer) in SAMPLING_LIMITS.items():
        if key in raw:
            out[key] = number(raw, key, "sampling_params", lo=lo, hi=hi, default=None, integer=integer)
    return out


def _comparisons(session: ComparisonSession, prompts: list[list[dict]], start: int) -> list[PromptComparison]:
    """Rows for new prompts. Each prompt's sampling seed is the same for both models; in blind mode
    who is A is drawn here, from the operating system's randomness (not from the visible seed)."""
    rows = []
    for offset, turns in enumerate(prompts):
        index = start + offset
        rows.append(PromptComparison(
            session=session, index=index, prompt=turns[-1]["content"], messages=turns,
            seed=(session.seed + index) % 2**31, a_is_base=bool(secrets.randbelow(2)) if session.blind else True))
    return PromptComparison.objects.bulk_create(rows)


@transaction.atomic
def session_create(*, team: Team, user, body: Any) -> ComparisonSession:
    """The design's ComparisonSession (10.2.2). Nothing runs until POST .../run (or `"run": true`)."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, SESSION_KEYS, "")
    require(body, ["name"])
    name = text(body, "name", "", max_len=200).strip()
    ctype = body.get("comparison_type", ComparisonSession.Type.BATCH)
    if ctype not in ComparisonSession.Type.values:
        raise bad("comparison_type", f"must be one of {', '.join(ComparisonSession.Type.values)}, got {ctype!r}")
    if body.get("test_prompts") is not None and body.get("dataset_id") is not None:
        raise bad("dataset_id", "give test_prompts or dataset_id, not both")
    sides, base_model, adapter = _sides(team, body)
    dataset = None
    if body.get("dataset_id") is not None:
        prompts, dataset = _prompts_from_test_split(user=user, team=team, body=body, ctype=ctype)
    elif body.get("test_prompts") is not None:
        prompts = _prompts_parse(body["test_prompts"], ctype)
    else:
        prompts = []
    if ctype == ComparisonSession.Type.SINGLE and len(prompts) > 1:
        raise bad("test_prompts", f"a single comparison takes one prompt, got {len(prompts)} (use \"batch\")")
    if len(prompts) > settings.NEXUS_EVAL_MAX_PROMPTS:
        raise bad("test_prompts", f"{len(prompts):,} prompts; at most {settings.NEXUS_EVAL_MAX_PROMPTS:,} "
                                  "(NEXUS_EVAL_MAX_PROMPTS)")
    sampling = _sampling(body.get("sampling_params"))
    seed = sampling.pop("seed", None)
    run = body.get("run", False)
    if not isinstance(run, bool):
        raise bad("run", f"must be true or false, got {run!r}")
    raters = number(body, "raters_required", "", lo=1, hi=50, default=1, integer=True)
    session = ComparisonSession.objects.create(
        team=team, created_by=user, name=name, description=text(body, "description", "", max_len=5000),
        comparison_type=ctype, base_model=base_model, adapter=adapter, sides=sides, dataset=dataset,
        system_prompt=text(body, "system_prompt", "", max_len=PROMPT_MAX_CHARS),
        sampling_params=sampling, raters_required=raters,
        seed=secrets.randbelow(2**31) if seed is None else seed)
    if seed is not None:
        session.sampling_params["seed"] = seed
        session.save(update_fields=["sampling_params"])
    _comparisons(session, prompts, 0)
    if run:
        session = session_run(session=session)
    return session


def _lock(session: ComparisonSession) -> ComparisonSession:
    return ComparisonSession.objects.select_for_update().get(pk=session.pk)


@transaction.atomic
def session_prompts_add(*, session: ComparisonSession, body: Any) -> list[PromptComparison]:
    """More prompts for a session ({"prompts": [...]} or {"test_prompts": [...]}); they run with the
    next POST .../run. Refused while a run is going and once a blind session is revealed."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, {"prompts", "test_prompts", "run"}, "")
    key = "test_prompts" if "test_prompts" in body and "prompts" not in body else "prompts"
    require(body, [key])
    session = _lock(session)
    if session.status in ACTIVE:
        raise NexusError("The session is running; add prompts when its run has ended.", code="running",
                         status_code=409)
    from evaluation_app.selectors import session_revealed

    if session.blind and session_revealed(session=session):
        raise NexusError("This blind session is revealed: new prompts could no longer be rated blind. Start a new "
                         "session for them.", code="revealed", status_code=409)
    prompts = _prompts_parse(body[key], session.comparison_type, key)
    count = session.comparisons.count()
    if session.comparison_type == ComparisonSession.Type.SINGLE and count + len(prompts) > 1:
        raise bad(key, "a single comparison holds one prompt (use a \"batch\" session)")
    if count + len(prompts) > settings.NEXUS_EVAL_MAX_PROMPTS:
        raise bad(key, f"the session would hold {count + len(prompts):,} prompts; at most "
                       f"{settings.NEXUS_EVAL_MAX_PROMPTS:,} (NEXUS_EVAL_MAX_PROMPTS)")
    last = session.comparisons.aggregate(m=Max("index"))["m"]
    start = 0 if last is None else last + 1
    rows = _comparisons(session, prompts, start)
    if body.get("run") is True:
        session_run(session=session)
    return rows


@transaction.atomic
def session_run(*, session: ComparisonSession) -> ComparisonSession:
    """Queue a run of the prompts not yet compared (new ones, and ones that failed before)."""
    session = _lock(session)
    if session.status in ACTIVE:
        raise NexusError(f"The session is already {session.status}.", code="running", status_code=409)
    todo = session.comparisons.exclude(status=PromptComparison.Status.DONE)
    if not todo.exists():
        raise NexusError("Every prompt of this session is compared already: add prompts (POST .../prompts) first.",
                         code="nothing_to_run", status_code=409)
    quota_check(team=session.team, kind="active_evaluations")
    todo.filter(status=PromptComparison.Status.FAILED).update(status=PromptComparison.Status.PENDING, error="")
    transition(COMPARISON, session.pk, to=S.QUEUED, frm=[S.CREATED, *ENDED], message="Queued", progress=0.0,
               error="", cancel_requested=False, worker="", completed_at=None, runs=session.runs + 1)
    enqueue(COMPARISON, session.pk)
    session.refresh_from_db()
    return session


def _cancel(kind: JobKind, model, row_id: int, what: str):  # noqa: ANN001
    with transaction.atomic():
        row = model.objects.select_for_update().get(pk=row_id)
        if row.status not in ACTIVE:
            raise NexusError(f"The {what} is not running ({row.status}).", code="not_active", status_code=409)
        if row.status == S.QUEUED:
            transition(kind, row.pk, to=S.CANCELLED, frm=[S.QUEUED], message="Cancelled before it started",
                       cancel_requested=True, completed_at=timezone.now())
        else:
            model.objects.filter(pk=row.pk).update(cancel_requested=True, updated_at=timezone.now())
            event(kind, row.pk, "Cancel requested; stopping after the current request")
            transaction.on_commit(lambda: control_send(kind=kind.name, job_id=row.pk, command="stop"))
    row.refresh_from_db()
    return row


def session_cancel(*, session: ComparisonSession) -> ComparisonSession:
    return _cancel(COMPARISON, ComparisonSession, session.pk, "comparison session")


def session_delete(*, session: ComparisonSession) -> None:
    if session.status in ACTIVE or JudgeRun.objects.filter(session=session, status__in=ACTIVE).exists():
        raise NexusError("The session (or a judge run over it) is running: cancel it first, then delete.",
                         code="running", status_code=409)
    session.delete()


def run_fail(kind: JobKind, job_id: int, error: str) -> None:
    message = public_text(error)
    transition(kind, job_id, to=S.FAILED, frm=list(ACTIVE), message=message, level="error", error=message,
               completed_at=timezone.now())


# -- human ratings ----------------------------------------------------------------------------------


def can_rate(*, user, session: ComparisonSession) -> bool:
    membership = Membership.objects.filter(team_id=session.team_id, user=user).select_related("team").first()
    return bool(membership and (membership.can_write or membership.team.viewers_rate_evaluations))


def _scores(raw: Any, path: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad(path, f"must be an object of criterion -> 1-5 ({', '.join(CRITERIA)})")
    out = {}
    for key, value in raw.items():
        criterion = str(key).lower()
        if criterion not in CRITERIA:
            raise bad(f"{path}.{key}", f"unknown criterion (known: {', '.join(CRITERIA)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
                or not 1 <= value <= 5:
            raise bad(f"{path}.{key}", f"must be an integer from 1 to 5, got {value!r}")
        out[criterion] = int(value)
    return out


@transaction.atomic
def comparison_rate(*, session: ComparisonSession, user, body: Any) -> ComparisonRating:
    """{"comparison_id", "preferred": "A" | "B" | "tie", "ratings": {"A": {criterion: 1-5}, "B": {...}},
    "reason"}: stored in model terms; rating again replaces the rater's earlier rating. In a blind
    session ratings close when it is revealed (so every rating in it was made blind)."""
    from evaluation_app.selectors import session_revealed

    if not can_rate(user=user, session=session):
        raise NexusError("Viewers of this team cannot rate comparisons (a team owner can allow it: "
                         "viewers_rate_evaluations).", code="permission_denied", status_code=403)
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, {"comparison_id", "preferred", "ratings", "reason"}, "")
    require(body, ["comparison_id", "preferred"])
    cid = _id(body, "comparison_id", "")
    comparison = PromptComparison.objects.select_for_update().filter(session=session, pk=cid).first()
    if comparison is None:
        raise bad("comparison_id", f"no comparison #{cid} in this session", status=404)
    if comparison.status != PromptComparison.Status.DONE:
        raise bad("comparison_id", f"comparison #{cid} has no responses yet ({comparison.status})", code="not_ready",
                  status=409)
    preferred = body.get("preferred")
    shown = {"a": "A", "b": "B", "tie": "tie"}.get(str(preferred).lower()) if isinstance(preferred, str) else None
    if shown is None:
        raise bad("preferred", f"must be \"A\", \"B\" or \"tie\", got {preferred!r}")
    ratings = body.get("ratings") or {}
    if not isinstance(ratings, dict):
        raise bad("ratings", 'must be {"A": {criterion: 1-5}, "B": {...}}')
    unknown({k.upper() if isinstance(k, str) else k: v for k, v in ratings.items()}, {"A", "B"}, "ratings")
    by_shown = {k.upper(): _scores(v, f"ratings.{k}") for k, v in ratings.items()}
    if session.blind and session_revealed(session=session):
        raise NexusError("This blind session is revealed; its ratings are closed so that every rating in it was "
                         "made blind.", code="revealed", status_code=409)
    role = {"A": "base" if comparison.a_is_base else "finetuned", "B": "finetuned" if comparison.a_is_base else "base"}
    rating, _ = ComparisonRating.objects.update_or_create(
        comparison=comparison, rater=user,
        defaults={"preferred": role.get(shown, "tie"), "reason": text(body, "reason", "", max_len=5000),
                  "ratings": {role[k]: v for k, v in by_shown.items() if v}})
    return rating


# -- LLM judge --------------------------------------------------------------------------------------


def judge_body(body: dict) -> dict:
    """The design's flat JudgeConfig (`judge_model`, `judge_api_key`, e.g. "gpt-4" or "deployed:7")
    as the `judge_config` teacher object every judge takes."""
    if body.get("judge_config") is None and body.get("judge_model"):
        if not isinstance(body["judge_model"], str):
            raise bad("judge_model", f"must be a model name such as \"gpt-4\" or \"deployed:7\", got {body['judge_model']!r}")
        return {**body, "judge_config": {"model": body["judge_model"],
                                         **({"api_key": body["judge_api_key"]} if body.get("judge_api_key") else {})}}
    if body.get("judge_model") or body.get("judge_api_key"):
        raise bad("judge_model", "give judge_config, or the design's judge_model and judge_api_key, not both")
    return body

JUDGE_KEYS = {"session_id", "judge_config", "judge_model", "judge_api_key", "evaluation_criteria", "scoring_rubric",
              "num_evaluations", "temperature", "concurrency"}


@transaction.atomic
def judge_create(*, team: Team, user, body: Any) -> JudgeRun:
    """POST /eval/judge: the design's JudgeConfig over one session's comparisons. `judge_config` is a
    teacher as distillation takes one (provider, model, api_key, base_url; a deployment; or a
    saved connection)."""
    from datasets_app.distillation.services import _check_running, teacher_parse
    from evaluation_app.selectors import session_get

    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, JUDGE_KEYS, "")
    body = judge_body(body)
    require(body, ["session_id", "judge_config"])
    sid = _id(body, "session_id", "")
    try:
        session = session_get(user=user, pk=sid)
    except Http404:
        raise bad("session_id", f"no comparison session #{sid} in your teams", status=404) from None
    if session.team_id != team.pk:
        raise bad("session_id", f"session #{sid} belongs to another team")
    if session.status in ACTIVE:
        raise bad("session_id", f"session #{sid} is {session.status}: judge it when its run has ended",
                  code="running", status=409)
    if not session.comparisons.filter(status=PromptComparison.Status.DONE).exists():
        raise bad("session_id", f"session #{sid} has no finished comparison to judge: run it first",
                  code="nothing_to_judge", status=409)
    criteria = body.get("evaluation_criteria") or list(CRITERIA)
    if not isinstance(criteria, list) or not all(isinstance(c, str) and c.strip() for c in criteria):
        raise bad("evaluation_criteria", f"must be a list of criterion names, e.g. {list(CRITERIA)}")
    criteria = list(dict.fromkeys(c.strip().lower() for c in criteria))
    if len(criteria) > 12 or any(len(c) > 40 for c in criteria):
        raise bad("evaluation_criteria", "at most 12 criteria of at most 40 characters each")
    rubric = body.get("scoring_rubric") or {}
    if not isinstance(rubric, dict) or not all(isinstance(v, str) for v in rubric.values()):
        raise bad("scoring_rubric", "must be an object of criterion -> what its 1-5 scores mean")
    extra = sorted(set(k.lower() for k in rubric) - set(criteria))
    if extra:
        raise bad(f"scoring_rubric.{extra[0]}", f"is not one of the evaluation_criteria ({', '.join(criteria)})")
    rubric = {c: rubric.get(c) or next((v for k, v in rubric.items() if k.lower() == c), "") or DEFAULT_RUBRIC.get(c, "")
              for c in criteria}
    judge = teacher_parse(team=team, user=user, raw=body["judge_config"], path="judge_config")
    _check_running(judge, "judge_config")
    temperature = number(body, "temperature", "", lo=0, hi=2, default=0.0)
    quota_check(team=team, kind="active_evaluations")
    fields = judge.fields()
    fields.update(temperature=temperature, max_tokens=min(fields["max_tokens"], 2048))
    run = JudgeRun.objects.create(
        team=team, created_by=user, session=session, connection=judge.connection, **fields,
        evaluation_criteria=criteria, scoring_rubric=rubric,
        num_evaluations=number(body, "num_evaluations", "", lo=1, hi=5, default=1, integer=True),
        concurrency=number(body, "concurrency", "", lo=1, hi=16, default=4, integer=True))
    event(JUDGE, run.pk, f"Queued: {session.comparisons.filter(status='done').count()} pairs, each judged in both "
                         f"orders by {run.label}")
    enqueue(JUDGE, run.pk)
    return run


def judge_cancel(*, run: JudgeRun) -> JudgeRun:
    return _cancel(JUDGE, JudgeRun, run.pk, "judge run")


# -- speed tests ------------------------------------------------------------------------------------

PERF_KEYS = {"name", "adapter_id", "test_prompts", "output_lengths", "batch_sizes", "num_iterations",
             "warmup_iterations", "team"}
PERF_DEFAULT_PROMPTS = ["Explain what a LoRA adapter is in two sentences.",
                        "Write a short poem about the sea.",
                        "List three tips for writing clear documentation, with one sentence each."]


def _int_list(body: dict, key: str, default: list[int], lo: int, hi: int, most: int) -> list[int]:
    raw = body.get(key, default)
    if not isinstance(raw, list) or not raw or len(raw) > most:
        raise bad(key, f"must be a list of 1 to {most} integers from {lo} to {hi}")
    for i, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise bad(f"{key}[{i}]", f"must be an integer from {lo} to {hi}, got {value!r}")
    return sorted(set(raw))


@transaction.atomic
def performance_create(*, team: Team, user, body: Any) -> PerformanceTest:
    """POST /eval/performance: the design's PerformanceTest for `adapter_id`: its base model against
    base + adapter, on real llama.cpp servers on a worker."""
    if not isinstance(body, dict):
        raise bad("body", "must be a JSON object")
    unknown(body, PERF_KEYS, "")
    require(body, ["adapter_id"])
    adapter = _team_adapter(team, _id(body, "adapter_id", ""), "adapter_id")
    _need_gguf(adapter, "adapter_id")
    if not adapter.base_model.gguf_path:
        raise bad("adapter_id", f"base model '{adapter.base_model.name}' has no GGUF file to run with llama.cpp",
                  code="no_gguf", status=409)
    prompts = body.get("test_prompts") or PERF_DEFAULT_PROMPTS
    prompts = [turns[0]["content"] for turns in _prompts_parse(prompts, ComparisonSession.Type.BATCH)]
    if len(prompts) > 50:
        raise bad("test_prompts", f"at most 50 prompts, got {len(prompts)}")
    lengths = _int_list(body, "output_lengths", [64, 256], 1, 2048, 8)
    batches = _int_list(body, "batch_sizes", [1, 4], 1, 32, 6)
    iterations = number(body, "num_iterations", "", lo=1, hi=200, default=10, integer=True)
    warmup = number(body, "warmup_iterations", "", lo=0, hi=20, default=2, integer=True)
    quota_check(team=team, kind="active_evaluations")
    test = PerformanceTest.objects.create(
        team=team, created_by=user, name=text(body, "name", "", max_len=200) or f"Speed: {adapter.name}",
        adapter=adapter, base_model=adapter.base_model, test_prompts=prompts, output_lengths=lengths,
        batch_sizes=batches, num_iterations=iterations, warmup_iterations=warmup)
    cells = len(lengths) * len(batches)
    event(PERFORMANCE, test.pk, f"Queued: {cells} cells x {iterations} rounds on 2 servers (base, base + adapter)")
    enqueue(PERFORMANCE, test.pk)
    return test


def performance_cancel(*, test: PerformanceTest) -> PerformanceTest:
    return _cancel(PERFORMANCE, PerformanceTest, test.pk, "speed test")


# -- the adapter page's quick comparison ------------------------------------------------------------


def adapter_compare(*, adapter: LoRAAdapter, prompt: str, max_tokens: int = 64,
                    wait_s: float | None = None) -> dict[str, Any]:
    """The same prompt (as a chat message, greedy) through the base GGUF and base + adapter GGUF,
    run on a CPU worker; this request waits for its answer. Nothing is stored."""
    from evaluation_app.tasks import compare_on_worker

    if not prompt.strip():
        raise NexusError("prompt: give a prompt to compare on", code="validation_error", details={"prompt": "empty"})
    base = adapter.base_model
    if not base.gguf_path:
        raise NexusError(f"The base model '{base.name}' has no GGUF file to run with llama.cpp.", code="no_gguf",
                         status_code=409)
    if not adapter.gguf_path:
        raise NexusError(f"Adapter '{adapter}' has no GGUF export yet. Export it first: POST "
                         f"/api/v1/finetune/adapters/{adapter.pk}/export with {{\"kind\": \"adapter_gguf\"}}, "
                         "then compare again when the export has completed.", code="no_gguf", status_code=409)
    wait_s = wait_s or COMPARE_WAIT_S
    reply_key = f"nexus:reply:compare:{secrets.token_hex(12)}"
    try:
        compare_on_worker.apply_async((reply_key, base.gguf_path, adapter.gguf_path, prompt, max_tokens), queue="cpu",
                                      expires=wait_s)
        import redis

        waiting = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=wait_s + 10, socket_connect_timeout=5)
        answer = waiting.blpop([reply_key], timeout=wait_s)
    except Exception as exc:  # noqa: BLE001 - kombu and redis raise several types for an unreachable broker
        raise NexusError("The comparison could not be sent to a worker: the task queue cannot be reached.",
                         code="queue_unavailable", status_code=503) from exc
    if answer is None:
        raise NexusError(f"No CPU worker answered within {wait_s:.0f} s (all busy, or none running); try again.",
                         code="worker_timeout", status_code=504)
    body = json.loads(answer[1])
    if not body["ok"]:
        raise NexusError(body["message"], code=body["code"], status_code=body["status"])
    out: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens}
    for side in ("base", "adapter"):
        out[side] = {"serves": base.name if side == "base" else f"{base.name} + {adapter}", **body["result"][side]}
    return out
