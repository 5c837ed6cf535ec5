"""Evaluation's reads: sessions and their comparisons as a given user may see them (blind until
revealed), summaries with their uncertainty, judge runs, speed tests and exports. Reads never
change anything: `revealed` is computed, not stored."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter, defaultdict
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from evaluation_app.engine.judge import CRITERIA
from evaluation_app.engine.stats import (
    cohen_kappa,
    krippendorff_alpha_nominal,
    mean_ci,
    preference_summary,
    spread,
    wilson_interval,
)
from evaluation_app.models import (
    ACTIVE,
    ComparisonRating,
    ComparisonSession,
    JudgeEvaluation,
    JudgeRun,
    PerformanceTest,
    PromptComparison,
)
from nexus.teams import get_for_user, visible_to

ROLES = ("base", "finetuned")
# what a blind rater may see of a response: its text and length, never who wrote it or how fast
BLIND_FIELDS = ("response", "tokens_generated", "finish_reason", "turns")


def session_list(*, user, team=None, adapter_id: int | None = None) -> QuerySet[ComparisonSession]:
    qs = visible_to(ComparisonSession.objects.select_related("base_model", "adapter"), user)
    if adapter_id is not None:
        qs = qs.filter(adapter_id=adapter_id)
    return qs.filter(team=team) if team is not None else qs


def session_get(*, user, pk: int, write: bool = False) -> ComparisonSession:
    return get_for_user(ComparisonSession.objects.select_related("team", "base_model", "adapter", "dataset"), user,
                        pk=pk, write=write)


def judge_run_list(*, user, team=None, session_id: int | None = None) -> QuerySet[JudgeRun]:
    qs = visible_to(JudgeRun.objects.select_related("session"), user)
    if session_id is not None:
        qs = qs.filter(session_id=session_id)
    return qs.filter(team=team) if team is not None else qs


def judge_run_get(*, user, pk: int, write: bool = False) -> JudgeRun:
    return get_for_user(JudgeRun.objects.select_related("team", "session"), user, pk=pk, write=write)


def performance_list(*, user, team=None, adapter_id: int | None = None) -> QuerySet[PerformanceTest]:
    qs = visible_to(PerformanceTest.objects.select_related("adapter", "base_model"), user)
    if adapter_id is not None:
        qs = qs.filter(adapter_id=adapter_id)
    return qs.filter(team=team) if team is not None else qs


def performance_get(*, user, pk: int, write: bool = False) -> PerformanceTest:
    return get_for_user(PerformanceTest.objects.select_related("team", "adapter", "base_model"), user, pk=pk,
                        write=write)


# -- blindness --------------------------------------------------------------------------------------


def rating_progress(*, session: ComparisonSession) -> dict[str, int]:
    """Comparisons with responses, and how many of them have the ratings a reveal needs."""
    done = session.comparisons.filter(status=PromptComparison.Status.DONE)
    rated = done.annotate(n=Count("ratings")).filter(n__gte=session.raters_required).count()
    return {"comparisons": session.comparisons.count(), "done": done.count(), "rated": rated,
            "pending": session.comparisons.filter(status=PromptComparison.Status.PENDING).count(),
            "raters_required": session.raters_required}


def session_revealed(*, session: ComparisonSession, progress: dict[str, int] | None = None) -> bool:
    """Not blind, or blind and every comparison rated (by `raters_required` members) with no run
    going and nothing left to compare. The run ending alone reveals nothing. `progress`: the
    session's rating_progress when the caller has it already."""
    if not session.blind:
        return True
    if session.status in ACTIVE:
        return False
    progress = progress or rating_progress(session=session)
    return progress["done"] > 0 and progress["pending"] == 0 and progress["rated"] == progress["done"]


def _shown(comparison: PromptComparison) -> dict[str, str]:
    """A/B -> role."""
    return {"A": "base", "B": "finetuned"} if comparison.a_is_base else {"A": "finetuned", "B": "base"}


def _response(comparison: PromptComparison, role: str) -> dict | None:
    return comparison.base_response if role == "base" else comparison.finetuned_response


def rating_as_shown(rating: ComparisonRating, comparison: PromptComparison) -> dict[str, Any]:
    """A rating in the A/B terms its rater saw."""
    shown = _shown(comparison)
    letter = {role: k for k, role in shown.items()}
    return {"preferred": letter.get(rating.preferred, "tie"),
            "ratings": {letter[role]: scores for role, scores in rating.ratings.items() if role in letter},
            "reason": rating.reason, "updated_at": rating.updated_at.isoformat()}


def comparison_view(comparison: PromptComparison, *, user, revealed: bool, ratings: list[ComparisonRating]) -> dict:
    """One comparison as `user` may see it. Blind and not revealed: response_a/response_b with their
    text and length only, the user's own rating in A/B terms, and how many ratings it has."""
    shown = _shown(comparison)
    view: dict[str, Any] = {"id": comparison.pk, "index": comparison.index, "prompt": comparison.prompt,
                            "messages": comparison.messages, "status": comparison.status, "error": comparison.error,
                            "num_ratings": len(ratings)}
    mine = next((r for r in ratings if r.rater_id == user.pk), None)
    view["my_rating"] = rating_as_shown(mine, comparison) if mine else None
    for letter, role in shown.items():
        response = _response(comparison, role)
        if response is None:
            view[f"response_{letter.lower()}"] = None
        elif revealed:
            view[f"response_{letter.lower()}"] = response
        else:
            view[f"response_{letter.lower()}"] = {k: response[k] for k in BLIND_FIELDS if k in response}
    if revealed:
        view.update(a_is=shown["A"], b_is=shown["B"], base_response=comparison.base_response,
                    finetuned_response=comparison.finetuned_response, created_at=comparison.created_at.isoformat(),
                    ratings=[{"rater": r.rater.get_username(), "preferred_model": r.preferred, "ratings": r.ratings,
                              "preference_reason": r.reason} for r in ratings])
        if mine:  # the design's single-rater fields, as this user rated
            view.update(preferred_model=mine.preferred, preference_reason=mine.reason, ratings_given=mine.ratings)
    return view


def session_comparisons(*, session: ComparisonSession, user, status: str = "", unrated_by_me: bool = False,
                        offset: int = 0, limit: int = 50) -> tuple[int, list[dict]]:
    qs = session.comparisons.all()
    if status:
        qs = qs.filter(status=status)
    if unrated_by_me:
        qs = qs.exclude(ratings__rater=user)
    total = qs.count()
    rows = list(qs.order_by("index")[offset:offset + limit])
    by_comparison: dict[int, list[ComparisonRating]] = defaultdict(list)
    for rating in ComparisonRating.objects.filter(comparison__in=rows).select_related("rater"):
        by_comparison[rating.comparison_id].append(rating)
    revealed = session_revealed(session=session)
    return total, [comparison_view(c, user=user, revealed=revealed, ratings=by_comparison[c.pk]) for c in rows]


def session_comparison(*, session: ComparisonSession, user, comparison_id: int) -> dict:
    """One comparison of the session as `user` may see it (404 when it is not the session's)."""
    comparison = session.comparisons.filter(pk=comparison_id).first()
    if comparison is None:
        raise Http404("No such comparison in this session.")
    ratings = list(ComparisonRating.objects.filter(comparison=comparison).select_related("rater"))
    return comparison_view(comparison, user=user, revealed=session_revealed(session=session), ratings=ratings)


def session_rows(*, user, adapter_id: int | None = None) -> QuerySet[ComparisonSession]:
    """The dashboard's sessions, with how many comparisons each has and how many are done."""
    return session_list(user=user, adapter_id=adapter_id).annotate(
        num_comparisons=Count("comparisons", distinct=True),
        num_done=Count("comparisons", filter=Q(comparisons__status=PromptComparison.Status.DONE), distinct=True))


def sides_view(session: ComparisonSession) -> list[dict[str, Any]]:
    return [{k: side.get(k) for k in ("role", "type", "label", "is_finetuned", "adapter_id", "export_id",
                                      "deployment_id")} for side in session.sides]


# -- summaries --------------------------------------------------------------------------------------


def _human_labels(session: ComparisonSession) -> dict[int, dict[int, str]]:
    """comparison id -> rater id -> base | finetuned | tie."""
    units: dict[int, dict[int, str]] = defaultdict(dict)
    for cid, rater, preferred in ComparisonRating.objects.filter(comparison__session=session).values_list(
            "comparison_id", "rater_id", "preferred"):
        units[cid][rater] = preferred
    return units


def _majority(labels: dict[int, str]) -> str:
    counts = Counter(labels.values()).most_common()
    return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else "tie"


def _criteria_means(score_dicts: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    names = list(CRITERIA) + sorted({c for d in score_dicts for role in d.values() for c in role} - set(CRITERIA))
    for criterion in names:
        values = {role: [d[role][criterion] for d in score_dicts if criterion in d.get(role, {})] for role in ROLES}
        if any(values.values()):
            out[criterion] = {role: mean_ci(values[role]) for role in ROLES}
    return out


def _speed(session: ComparisonSession) -> dict[str, Any]:
    out = {}
    for role in ROLES:
        field = f"{role}_response"
        values = [r[field]["tokens_per_second"] for r in session.comparisons.filter(status="done").values(field)
                  if r[field] and r[field].get("tokens_per_second")]
        out[role] = spread(values)
    return out


def session_summary(*, session: ComparisonSession) -> dict[str, Any]:
    """The session's summary: progress always; once revealed (or not blind) the human preference
    with 95% intervals and a sign test, per-criterion means with 95% intervals, the raters and their
    agreement, and the speed of each model."""
    progress = rating_progress(session=session)
    revealed = session_revealed(session=session, progress=progress)
    units = _human_labels(session)
    raters = {r for unit in units.values() for r in unit}
    summary: dict[str, Any] = {**progress, "revealed": revealed, "raters": len(raters),
                               "ratings": sum(len(u) for u in units.values())}
    if not revealed:
        return summary
    labels = [label for unit in units.values() for label in unit.values()]
    ratings = list(ComparisonRating.objects.filter(comparison__session=session).values_list("ratings", flat=True))
    summary["human"] = {
        "preference": preference_summary(labels),
        "per_comparison": preference_summary([_majority(u) for u in units.values()]),
        "criteria": _criteria_means([r for r in ratings if r]),
        "agreement": krippendorff_alpha_nominal(units) if len(raters) > 1 else None,
    }
    summary["speed"] = _speed(session)
    return summary


def judge_summary(*, run: JudgeRun) -> dict[str, Any]:
    """Verdicts with 95% intervals, the judge's position consistency (share of pairs whose two
    orders agreed) and, where people rated the same comparisons, Cohen's kappa between the judge
    and the people's majority."""
    rows = list(run.evaluations.all())
    done = [e for e in rows if e.status == JudgeEvaluation.Status.DONE]
    rounds = sum(len(e.orders) for e in done)
    consistent = sum(1 for e in done for o in e.orders if o.get("consistent"))
    summary: dict[str, Any] = {
        "pairs": run.session.comparisons.filter(status="done").count(), "judged": len(done),
        "errors": len(rows) - len(done), "verdicts": preference_summary([e.judge_verdict for e in done]),
        "position_consistency": {"consistent": consistent, "rounds": rounds,
                                 "rate": consistent / rounds if rounds else None,
                                 "interval": wilson_interval(consistent, rounds) if rounds else None},
        "criteria": _criteria_means([e.criteria_scores for e in done if e.criteria_scores]),
        "mean_confidence": mean_ci([e.confidence for e in done if e.confidence is not None]),
    }
    units = _human_labels(run.session)
    pairs = [(e.judge_verdict, _majority(units[e.comparison_id])) for e in done if units.get(e.comparison_id)]
    summary["agreement_with_humans"] = ({**cohen_kappa([p[0] for p in pairs], [p[1] for p in pairs]),
                                         "comparisons": len(pairs)} if pairs else None)
    return summary


def judge_evaluations(*, run: JudgeRun) -> list[dict[str, Any]]:
    return [{"id": e.pk, "comparison_id": e.comparison_id, "index": e.comparison.index, "prompt": e.comparison.prompt,
             "base_response": (e.comparison.base_response or {}).get("response", ""),
             "finetuned_response": (e.comparison.finetuned_response or {}).get("response", ""),
             "status": e.status, "judge_verdict": e.judge_verdict, "judge_reasoning": e.judge_reasoning,
             "criteria_scores": e.criteria_scores, "confidence": e.confidence, "consistent": e.consistent,
             "orders": e.orders, "error": e.error}
            for e in run.evaluations.select_related("comparison").order_by("comparison__index")]


# -- export -----------------------------------------------------------------------------------------

EXPORT_COLUMNS = ("index", "prompt", "response_a", "response_b", "a_is", "base_response", "finetuned_response",
                  "base_tokens", "finetuned_tokens", "base_ms", "finetuned_ms", "base_tokens_per_s",
                  "finetuned_tokens_per_s", "rater", "preferred", "reason", "ratings")


def session_export(*, session: ComparisonSession, user, fmt: str) -> tuple[bytes, str]:
    """CSV (a row per comparison and rater) or JSON (the session, its comparisons and summary);
    before a blind session is revealed, only A/B and the user's own ratings."""
    _, rows = session_comparisons(session=session, user=user, offset=0, limit=10**9)
    revealed = session_revealed(session=session)
    if fmt == "json":
        body = {"id": session.pk, "name": session.name, "comparison_type": session.comparison_type,
                "revealed": revealed, "sides": sides_view(session) if revealed else None,
                "system_prompt": session.system_prompt, "sampling_params": session.sampling_params,
                "comparisons": rows, "summary": session_summary(session=session)}
        return json.dumps(body, indent=2, default=str).encode(), "application/json"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS if revealed else EXPORT_COLUMNS[:4] + EXPORT_COLUMNS[13:])
    writer.writeheader()
    for row in rows:
        line: dict[str, Any] = {"index": row["index"], "prompt": row["prompt"],
                                "response_a": (row["response_a"] or {}).get("response", ""),
                                "response_b": (row["response_b"] or {}).get("response", "")}
        if revealed:
            for role in ROLES:
                r = row.get(f"{role}_response") or {}
                line.update({f"{role}_response": r.get("response", ""), f"{role}_tokens": r.get("tokens_generated"),
                             f"{role}_ms": r.get("generation_time_ms"), f"{role}_tokens_per_s": r.get("tokens_per_second")})
            line["a_is"] = row["a_is"]
            raters = row["ratings"] or [None]
            for rating in raters:
                extra = ({"rater": rating["rater"], "preferred": rating["preferred_model"],
                          "reason": rating["preference_reason"], "ratings": json.dumps(rating["ratings"])}
                         if rating else {})
                writer.writerow({**line, **extra})
        else:
            mine = row["my_rating"]
            writer.writerow({**line, **({"rater": user.get_username(), "preferred": mine["preferred"],
                                         "reason": mine["reason"], "ratings": json.dumps(mine["ratings"])} if mine else {})})
    return out.getvalue().encode(), "text/csv"
