"""Evaluation pages: the dashboard (sessions, judge runs and speed tests, per adapter, and the forms
that start them), a comparison session (its comparisons side by side, rated with stars), the blind
rating flow (one comparison at a time, by keyboard), a session's results, a judge run and a speed
test. Each view: access helper -> one service or selector -> render."""
from __future__ import annotations

import math
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from adapters_app.selectors import adapter_get, adapter_list
from evaluation_app.benchmarks.selectors import benchmark_job_get
from evaluation_app.charts import (
    ROLE_LABELS,
    Bar,
    criteria_chart,
    criterion_help,
    hbars,
    preference_chart,
    spread_bars,
    winner_sentence,
)
from evaluation_app.engine.judge import CRITERIA
from evaluation_app.forms import JudgeForm, PromptsForm, SessionForm, SpeedTestForm
from evaluation_app.jobs import COMPARISON
from evaluation_app.models import ACTIVE, ComparisonSession, JudgeRun, PerformanceTest
from evaluation_app.selectors import (
    judge_evaluations,
    judge_run_get,
    judge_run_list,
    judge_summary,
    performance_get,
    performance_list,
    rating_progress,
    session_comparison,
    session_comparisons,
    session_get,
    session_revealed,
    session_rows,
    session_summary,
    sides_view,
)
from evaluation_app.services import (
    can_rate,
    comparison_rate,
    judge_cancel,
    judge_create,
    performance_cancel,
    performance_create,
    session_cancel,
    session_create,
    session_delete,
    session_prompts_add,
    session_run,
)
from nexus.errors import NexusError
from nexus.events import job_events_last_seq
from nexus.teams import membership_for, resolve_team

PER_PAGE = 20
STARS = (5, 4, 3, 2, 1)  # in the page right to left: CSS lights a checked star and the ones before it
SPEED_METRICS = {  # evaluation_app/engine/speed.py's metrics: title, unit
    "tokens_per_second": ("Tokens/s per request", " tok/s"),
    "time_to_first_token_ms": ("Time to first token", " ms"),
    "total_time_ms": ("Total time per request", " ms"),
    "throughput_tokens_per_second": ("Throughput per round (all requests)", " tok/s"),
}


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, str) and value.isdecimal() and len(value) < 12 else None


def _can_write(user, row) -> bool:  # noqa: ANN001
    membership = membership_for(user, row.team_id)
    return bool(membership and membership.can_write)


# -- dashboard ------------------------------------------------------------------------------------------


def _dashboard(request, *, session_form: SessionForm | None = None, speed_form: SpeedTestForm | None = None,
               judge_form: JudgeForm | None = None, status: int = 200) -> HttpResponse:
    user = request.user
    adapter_id = _int(request.GET.get("adapter"))
    session_id = _int(request.GET.get("session"))
    picked = {"adapter": str(adapter_id)} if adapter_id else {}
    judge_runs = judge_run_list(user=user).select_related("session__adapter")
    if adapter_id:
        judge_runs = judge_runs.filter(session__adapter_id=adapter_id)
    adapters = list(adapter_list(user=user).select_related("base_model").order_by("name", "-version"))
    return render(request, "evaluation/index.html", {
        "adapters": adapters, "adapter": next((a for a in adapters if a.pk == adapter_id), None),
        "sessions": session_rows(user=user, adapter_id=adapter_id)[:50], "judge_runs": judge_runs[:50],
        "speed_tests": performance_list(user=user, adapter_id=adapter_id)[:50],
        "session_form": session_form or SessionForm(user=user, initial=picked),
        "speed_form": speed_form or SpeedTestForm(user=user, initial=picked),
        "judge_form": judge_form or JudgeForm(user=user, initial={"session": str(session_id)} if session_id else {}),
        "open_form": "session" if session_form else "speed" if speed_form else "judge" if judge_form or session_id else "",
    }, status=status)


@login_required
def evaluation_index_page(request):
    return _dashboard(request)


def _start(request, which: str) -> HttpResponse:
    """A dashboard form's POST: the team is the one of the adapter or session it names (403 for a
    viewer); the service's refusal goes back next to its field, with what was typed."""
    form_class, owner_field, owner_get, create, page, arg = STARTS[which]
    form = form_class(request.POST, user=request.user)
    if not form.is_valid():
        return _dashboard(request, **{f"{which}_form": form}, status=400)
    owner = owner_get(user=request.user, pk=int(form.cleaned_data[owner_field]))
    team = resolve_team(request.user, owner.team_id, write=True)
    try:
        row = create(team=team, user=request.user, body=form.body())
    except NexusError as exc:
        form.add_service_error(exc)
        return _dashboard(request, **{f"{which}_form": form}, status=exc.status_code)
    return redirect(page, **{arg: row.pk})


STARTS = {"session": (SessionForm, "adapter", adapter_get, session_create, "evaluation-session", "session_id"),
          "speed": (SpeedTestForm, "adapter", adapter_get, performance_create, "evaluation-performance",
                    "performance_id"),
          "judge": (JudgeForm, "session", session_get, judge_create, "evaluation-judge", "judge_id")}


@require_POST
@login_required
def session_new_page(request):
    return _start(request, "session")


@require_POST
@login_required
def performance_new_page(request):
    return _start(request, "speed")


@require_POST
@login_required
def judge_new_page(request):
    return _start(request, "judge")


LIVE_ROWS = {"comparison": session_get, "judge": judge_run_get, "performance": performance_get,
             "benchmark": benchmark_job_get}


@login_required
def run_progress_partial(request, kind: str, row_id: int):
    """A dashboard row's live progress cell (live.js reloads it on a status event)."""
    if kind not in LIVE_ROWS:
        raise Http404("No such kind of run.")
    return render(request, "evaluation/_progress.html", {"row": LIVE_ROWS[kind](user=request.user, pk=row_id),
                                                         "kind": kind})


# -- a session ------------------------------------------------------------------------------------------


def _status_context(request, session: ComparisonSession) -> dict[str, Any]:
    return {"session": session, "progress": rating_progress(session=session), "active": session.status in ACTIVE,
            "revealed": session_revealed(session=session), "can_write": _can_write(request.user, session)}


def _comparison_card(session: ComparisonSession, row: dict, *, revealed: bool, rater: bool,
                     draft: dict | None = None, error: str = "") -> dict[str, Any]:
    """A comparison as the page shows it. Blind and not revealed: "Response A/B", text and length
    only (the selector gave nothing more); otherwise which model wrote each, with its timing."""
    shown = {"A": row.get("a_is"), "B": row.get("b_is")} if revealed else {}
    mine = draft or row.get("my_rating") or {}
    sides = []
    for letter in "AB":
        response, role = row.get(f"response_{letter.lower()}"), shown.get(letter)
        scores = (mine.get("ratings") or {}).get(letter) or {}
        ms = (response or {}).get("generation_time_ms") if role else None
        sides.append({"letter": letter, "title": f"{ROLE_LABELS[role]} model" if role else f"Response {letter}",
                      "name": (response or {}).get("model_name", "") if role else "", "response": response,
                      "timing": bool(role and ms is not None), "seconds": ms / 1000 if ms is not None else None,
                      "criteria": [{"key": c, "help": criterion_help(c), "value": scores.get(c)} for c in CRITERIA]})
    choices = [("A", ROLE_LABELS[shown["A"]] if shown else "A"), ("tie", "Tie"),
               ("B", ROLE_LABELS[shown["B"]] if shown else "B")]
    rating_rows = [{"rater": r["rater"], "preferred": ROLE_LABELS.get(r["preferred_model"], r["preferred_model"]),
                    "reason": r["preference_reason"],
                    "scores": [tuple((r["ratings"].get(role) or {}).get(c) for role in ("base", "finetuned"))
                               for c in CRITERIA]} for r in row.get("ratings") or []]
    return {**row, "sides": sides, "choices": choices, "mine": mine, "error": error, "stars": STARS,
            "rating_rows": rating_rows,
            "rateable": rater and row["status"] == "done" and not (session.blind and revealed)}


def _session_context(request, session: ComparisonSession, prompts_form: PromptsForm | None = None) -> dict[str, Any]:
    user = request.user
    page = max(1, _int(request.GET.get("page")) or 1)
    total, rows = session_comparisons(session=session, user=user, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    ctx = _status_context(request, session)
    rater = can_rate(user=user, session=session)
    return {**ctx, "sides": sides_view(session), "rater": rater, "total": total, "page": page,
            "pages": max(1, math.ceil(total / PER_PAGE)),
            "comparisons": [_comparison_card(session, r, revealed=ctx["revealed"], rater=rater) for r in rows],
            "judge_runs": judge_run_list(user=user, session_id=session.pk),
            "prompts_form": prompts_form or PromptsForm(),
            "last_seq": job_events_last_seq(kind=COMPARISON.name, job_id=session.pk)}


@login_required
def session_page(request, session_id: int, prompts_form: PromptsForm | None = None, status: int = 200):
    session = session_get(user=request.user, pk=session_id)
    if request.htmx:
        return render(request, "evaluation/_session_status.html", _status_context(request, session))
    return render(request, "evaluation/session.html", _session_context(request, session, prompts_form), status=status)


def _act(request, loader, pk: int, action, page: str, done: str = "") -> HttpResponse:  # noqa: ANN001
    """A button's POST: the row loaded for writing (403 for a viewer), one service call; a refusal
    becomes a message on the page it goes back to."""
    row = loader(user=request.user, pk=pk, write=True)
    try:
        action(row)
    except NexusError as exc:
        messages.error(request, exc.message)
    else:
        if done:
            messages.success(request, done)
    return redirect(page, pk)


@require_POST
@login_required
def session_run_page(request, session_id: int):
    return _act(request, session_get, session_id, lambda s: session_run(session=s), "evaluation-session",
                "Queued: the comparisons run on a worker.")


@require_POST
@login_required
def session_cancel_page(request, session_id: int):
    return _act(request, session_get, session_id, lambda s: session_cancel(session=s), "evaluation-session",
                "Cancel requested: finished comparisons are kept.")


@require_POST
@login_required
def session_delete_page(request, session_id: int):
    session = session_get(user=request.user, pk=session_id, write=True)
    try:
        session_delete(session=session)
    except NexusError as exc:
        messages.error(request, exc.message)
        return redirect("evaluation-session", session_id=session_id)
    messages.success(request, f"Deleted the session '{session.name}'.")
    return redirect("evaluation-index")


@require_POST
@login_required
def session_prompts_page(request, session_id: int):
    session = session_get(user=request.user, pk=session_id, write=True)
    form = PromptsForm(request.POST)
    if form.is_valid():
        try:
            rows = session_prompts_add(session=session, body=form.body(session))
        except NexusError as exc:
            form.add_service_error(exc)
            return session_page(request, session_id, prompts_form=form, status=exc.status_code)
        messages.success(request, f"Added {len(rows)} prompt{'s' if len(rows) != 1 else ''}.")
        return redirect("evaluation-session", session_id=session_id)
    return session_page(request, session_id, prompts_form=form, status=400)


# -- rating ---------------------------------------------------------------------------------------------


def _rating_body(post, comparison_id: int | None) -> dict[str, Any]:  # noqa: ANN001
    """The API's rating body from the form: stars are radio buttons named <A|B>_<criterion>."""
    ratings = {letter: {c: int(post[f"{letter}_{c}"]) for c in CRITERIA if post.get(f"{letter}_{c}", "").isdecimal()}
               for letter in "AB"}
    return {"comparison_id": comparison_id, "preferred": post.get("preferred", ""),
            "ratings": {k: v for k, v in ratings.items() if v}, "reason": post.get("reason", "")}


def _rate(request, session: ComparisonSession, comparison_id: int | None) -> tuple[str, dict | None]:
    """Store the posted rating: ("", None), or the refusal and what was posted (to show it again)."""
    if not can_rate(user=request.user, session=session):
        raise PermissionDenied("Viewers of this team cannot rate comparisons.")
    body = _rating_body(request.POST, comparison_id)
    try:
        comparison_rate(session=session, user=request.user, body=body)
    except NexusError as exc:
        if not request.htmx:
            messages.error(request, exc.message)
        return exc.message, body
    return "", None


@login_required
def comparison_partial(request, session_id: int, comparison_id: int):
    """One comparison block (the session page reloads it when its run finishes it)."""
    session = session_get(user=request.user, pk=session_id)
    row = session_comparison(session=session, user=request.user, comparison_id=comparison_id)
    card = _comparison_card(session, row, revealed=session_revealed(session=session),
                            rater=can_rate(user=request.user, session=session))
    return render(request, "evaluation/_comparison.html", {"session": session, "c": card})


@require_POST
@login_required
def comparison_rate_partial(request, session_id: int, comparison_id: int):
    session = session_get(user=request.user, pk=session_id)
    session_comparison(session=session, user=request.user, comparison_id=comparison_id)  # 404 if not its own
    error, draft = _rate(request, session, comparison_id)
    if not request.htmx:
        if not error:
            messages.success(request, "Rating saved.")
        return redirect(reverse("evaluation-session", args=[session_id]) + f"#comparison-{comparison_id}")
    row = session_comparison(session=session, user=request.user, comparison_id=comparison_id)
    card = _comparison_card(session, row, revealed=session_revealed(session=session), rater=True,
                            draft=draft, error=error)
    return render(request, "evaluation/_comparison.html", {"session": session, "c": card, "saved": not error})


def _rate_context(request, session: ComparisonSession, *, rater: bool, error: str = "", draft: dict | None = None
                  ) -> dict[str, Any]:
    left, rows = session_comparisons(session=session, user=request.user, status="done", unrated_by_me=True, limit=1)
    progress = rating_progress(session=session)
    revealed = session_revealed(session=session)
    closed = session.blind and revealed  # ratings close once the names are shown
    card = None
    if rows and not closed:
        mine = draft if draft and draft.get("comparison_id") == rows[0]["id"] else None
        card = _comparison_card(session, rows[0], revealed=revealed, rater=rater, draft=mine,
                                error=error if mine else "")
    done = progress["done"]
    return {"session": session, "c": card, "flow": True, "rater": rater, "revealed": revealed, "closed": closed and left,
            "rated": done - left, "done": done, "progress": progress, "error": "" if card and card["error"] else error,
            "percent": round(100 * (done - left) / done) if done else 0}


@login_required
def session_rate_page(request, session_id: int):
    """The rating flow: the next comparison this user has not rated, one at a time."""
    session = session_get(user=request.user, pk=session_id)
    error, draft = "", None
    if request.method == "POST":
        error, draft = _rate(request, session, _int(request.POST.get("comparison_id")))
        if not request.htmx:
            return redirect("evaluation-rate", session_id=session_id)
    ctx = _rate_context(request, session, rater=can_rate(user=request.user, session=session), error=error, draft=draft)
    return render(request, "evaluation/_rate_flow.html" if request.htmx else "evaluation/rate.html", ctx)


# -- results --------------------------------------------------------------------------------------------


def _judge_card(run: JudgeRun, revealed: bool) -> dict[str, Any]:
    """A judge run's summary and its charts; nothing while its blind session is not revealed."""
    if not revealed:
        return {"run": run, "summary": None}
    summary = judge_summary(run=run)
    return {"run": run, "summary": summary, "winner": winner_sentence(summary["verdicts"], what="verdicts"),
            "verdict_chart": preference_chart(summary["verdicts"], chart_id=f"judge-{run.pk}-verdicts",
                                              title="Judge verdicts, 95% Wilson intervals"),
            "criteria_chart": criteria_chart(summary["criteria"], chart_id=f"judge-{run.pk}-criteria",
                                             title="Judge scores per criterion (1-5), mean and 95% interval")}


@login_required
def session_results_page(request, session_id: int):
    session = session_get(user=request.user, pk=session_id)
    summary = session_summary(session=session)
    ctx: dict[str, Any] = {"session": session, "summary": summary, "sides": sides_view(session)}
    if summary["revealed"]:
        human = summary["human"]
        ctx.update(
            winner=winner_sentence(human["preference"]),
            preference_chart=preference_chart(human["preference"], chart_id="preference-chart",
                                              title="Every rating: which response was better (95% Wilson intervals)"),
            majority_chart=preference_chart(human["per_comparison"], chart_id="majority-chart",
                                            title="Each comparison by the majority of its raters"),
            criteria_chart=criteria_chart(human["criteria"], chart_id="criteria-chart",
                                          title="Scores per criterion (1-5): mean and 95% interval"),
            speed_chart=hbars(spread_bars(summary["speed"], unit=" tok/s"), chart_id="speed-chart",
                              title="Tokens/s per response: median with p25–p75"))
    ctx["judges"] = [_judge_card(run, summary["revealed"]) for run in judge_run_list(user=request.user,
                                                                                      session_id=session.pk)]
    return render(request, "evaluation/results.html", ctx)


# -- judge runs and speed tests -------------------------------------------------------------------------


@login_required
def judge_page(request, judge_id: int):
    run = judge_run_get(user=request.user, pk=judge_id)
    revealed = session_revealed(session=run.session)
    ctx = {"run": run, "card": _judge_card(run, revealed), "revealed": revealed, "active": run.status in ACTIVE,
           "can_write": _can_write(request.user, run), "evaluations": judge_evaluations(run=run) if revealed else None}
    return render(request, "evaluation/_judge_body.html" if request.htmx else "evaluation/judge.html", ctx)


@require_POST
@login_required
def judge_cancel_page(request, judge_id: int):
    return _act(request, judge_run_get, judge_id, lambda r: judge_cancel(run=r), "evaluation-judge")


def _performance_charts(test: PerformanceTest) -> dict[str, Any]:
    """Base against fine-tuned per metric: overall, then per cell (output length x concurrency),
    each a median with p25-p75; peak memory; the % differences. Whatever the metrics hold."""
    metrics = {"base": test.base_model_metrics or {}, "finetuned": test.finetuned_metrics or {}}
    overall, cells = [], []
    for key, (title, unit) in SPEED_METRICS.items():
        spreads = {role: (m.get("overall") or {}).get(key) for role, m in metrics.items()}
        if any(isinstance(s, dict) for s in spreads.values()):
            overall.append(hbars(spread_bars(spreads, unit=unit), chart_id=f"overall-{key}",
                                 title=f"{title}: median, p25–p75"))
        theirs = {(c.get("output_length"), c.get("batch_size")): c for c in metrics["finetuned"].get("cells") or []}
        bars = []
        for cell in metrics["base"].get("cells") or []:
            other = theirs.get((cell.get("output_length"), cell.get("batch_size"))) or {}
            if isinstance(cell.get(key), dict) or isinstance(other.get(key), dict):
                bars += spread_bars({"base": cell.get(key), "finetuned": other.get(key)}, unit=unit,
                                    group=f"{cell.get('output_length')} tokens × {cell.get('batch_size')} at once")
        if bars:
            cells.append(hbars(bars, chart_id=f"cells-{key}", title=f"{title} per output length and concurrency"))
    memory = [Bar(ROLE_LABELS[role], m.get("peak_memory_mb"), key=role,
                  text="–" if m.get("peak_memory_mb") is None else f"{m['peak_memory_mb']:,.0f} MB")
              for role, m in metrics.items()]
    comparison = test.comparison or {}
    keys = [k for k in SPEED_METRICS if k in (comparison.get("overall") or {})]
    table = [{"what": "overall", "values": [(comparison.get("overall") or {}).get(k) for k in keys]}] + [
        {"what": f"{c.get('output_length')} tokens × {c.get('batch_size')}", "values": [c.get(k) for k in keys]}
        for c in comparison.get("cells") or []] if comparison else []
    return {"overall_charts": overall, "cell_charts": cells,
            "memory_chart": hbars(memory, chart_id="memory-chart", title="Peak memory of the server (VmHWM)")
            if any(b.value is not None for b in memory) else None,
            "memory_notes": [(ROLE_LABELS[r], m.get("peak_memory_note")) for r, m in metrics.items()
                             if m.get("peak_memory_note")],
            "diff_columns": [SPEED_METRICS[k][0] for k in keys], "diff_rows": table,
            "memory_diff": comparison.get("peak_memory_mb")}


@login_required
def performance_page(request, performance_id: int):
    test = performance_get(user=request.user, pk=performance_id)
    ctx = {"test": test, "active": test.status in ACTIVE, "can_write": _can_write(request.user, test),
           **_performance_charts(test)}
    return render(request, "evaluation/_performance_body.html" if request.htmx else "evaluation/performance.html", ctx)


@require_POST
@login_required
def performance_cancel_page(request, performance_id: int):
    return _act(request, performance_get, performance_id, lambda t: performance_cancel(test=t),
                "evaluation-performance")
