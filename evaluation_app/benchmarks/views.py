"""Benchmark pages: the runner (suites with their data status and a time estimate), the list of
jobs, a job's results (10.7.4: averages, the table with intervals, a chart, categories, items,
insights and provenance, followed live while it runs), custom test sets, and an adapter's
evaluation summary (10.9). Each view: access helper -> one service or selector -> render."""
from __future__ import annotations

import math
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from adapters_app.selectors import adapter_get
from datasets_app.selectors import dataset_get
from evaluation_app.benchmarks.forms import BenchmarkForm, CustomBenchmarkForm, CustomFromDatasetForm
from evaluation_app.benchmarks.selectors import (
    benchmark_job_get,
    benchmark_job_list,
    benchmark_job_view,
    custom_benchmark_get,
    custom_benchmark_list,
    evaluation_summary,
    suites_view,
)
from evaluation_app.benchmarks.services import benchmark_job_cancel, benchmark_job_create, custom_benchmark_create, \
    custom_benchmark_delete
from evaluation_app.charts import benchmark_chart, preference_chart, winner_sentence
from evaluation_app.engine.custom import TYPES
from evaluation_app.models import ACTIVE, BenchmarkJob
from evaluation_app.views import _act, _can_write, _int
from nexus.errors import NexusError
from nexus.teams import resolve_team

ITEMS_PER_PAGE = 200
RECOMMENDATIONS = {"deploy": "Deploy", "needs_work": "Needs work", "regression": "Regression"}


# -- the runner -----------------------------------------------------------------------------------------


def _runner(request, form: BenchmarkForm, status: int = 200) -> HttpResponse:
    suites = suites_view(user=request.user)
    ticked = set(form.selected) if form.is_bound else set()
    for suite in suites:
        suite["ticked"] = suite["name"] in ticked
        suite["samples"] = form.data.get(f"samples-{suite['name']}", "") if form.is_bound else ""
        suite["error"] = form.suite_errors.get(suite["name"], "")
    return render(request, "evaluation/benchmark_new.html", {"form": form, "suites": suites}, status=status)


@login_required
def benchmark_new_page(request):
    """GET: the form (`?adapter=` picks one); POST: the job, in the adapter's team (or the chosen
    team without one; 403 for a viewer); a refusal goes back next to its field or suite."""
    if request.method != "POST":
        adapter_id = _int(request.GET.get("adapter"))
        return _runner(request, BenchmarkForm(user=request.user, initial={"adapter": str(adapter_id or "")}))
    form = BenchmarkForm(request.POST, user=request.user)
    if not form.is_valid():
        return _runner(request, form, status=400)
    if form.cleaned_data.get("adapter"):
        owner = adapter_get(user=request.user, pk=int(form.cleaned_data["adapter"]))
        team = resolve_team(request.user, owner.team_id, write=True)
    else:
        team = resolve_team(request.user, form.cleaned_data.get("team") or None, write=True)
    try:
        job = benchmark_job_create(team=team, user=request.user, body=form.body())
    except NexusError as exc:
        form.add_service_error(exc)
        return _runner(request, form, status=exc.status_code)
    return redirect("evaluation-benchmark", benchmark_id=job.pk)


# -- jobs -----------------------------------------------------------------------------------------------


@login_required
def benchmark_list_page(request):
    adapter_id = _int(request.GET.get("adapter"))
    jobs = benchmark_job_list(user=request.user, adapter_id=adapter_id).select_related("team")[:100]
    return render(request, "evaluation/benchmarks.html", {"jobs": jobs, "adapter_id": adapter_id})


def _source(data: dict[str, Any]) -> str:
    """A result's data source in words (a suite's package or import, or a custom set)."""
    source = data.get("source")
    if isinstance(source, dict):
        return ", ".join(f"{k}: {v}" for k, v in source.items() if not isinstance(v, (dict, list)))
    return str(source or "")


def _results(job: BenchmarkJob) -> dict[str, Any]:
    view = benchmark_job_view(job)
    results = list(view["results"].values())
    for r in results:
        provenance = r["provenance"] or {}
        r["source"] = _source(provenance.get("data") or {})
        r["categories"] = [{"name": name, **cat} for name, cat in (r["detailed_results"].get("categories") or {}).items()]
    summary = evaluation_summary(adapter=job.adapter) if job.adapter_id and results else None
    return {"job": job, "view": view, "results": results, "summary": summary,
            "recommendation": RECOMMENDATIONS.get(summary["recommendation"]) if summary else None,
            "chart": benchmark_chart(results, chart_id="benchmark-chart",
                                     title="Score per benchmark: base and fine-tuned (change with its paired 95% "
                                           "interval)")}


def _body(request, job: BenchmarkJob) -> dict[str, Any]:
    return {**_results(job), "active": job.status in ACTIVE, "can_write": _can_write(request.user, job),
            "model": job.adapter.name if job.adapter_id else job.base_model.name}


@login_required
def benchmark_page(request, benchmark_id: int):
    """The job's results; htmx asks for the body (on a status event) or the results alone (when a
    benchmark finishes)."""
    job = benchmark_job_get(user=request.user, pk=benchmark_id)
    if request.htmx and request.GET.get("part") == "results":
        return render(request, "evaluation/_benchmark_results.html", _results(job))
    template = "evaluation/_benchmark_body.html" if request.htmx else "evaluation/benchmark.html"
    return render(request, template, _body(request, job))


@require_POST
@login_required
def benchmark_cancel_page(request, benchmark_id: int):
    return _act(request, benchmark_job_get, benchmark_id, lambda j: benchmark_job_cancel(job=j),
                "evaluation-benchmark", "Cancel requested: finished benchmarks are kept.")


def _item_cell(view: dict | None) -> dict[str, Any]:
    """One model's outcome on one item: right or wrong where there is one, else its score."""
    view = view or {}
    correct = view.get("correct", view.get("passed"))
    answer = view.get("response") or view.get("completion") or view.get("extracted")
    if answer is None and view.get("picked") is not None:
        answer = f"picked {view['picked']}"
    return {"correct": correct if isinstance(correct, bool) else None, "score": view.get("score"),
            "answer": "" if answer is None else str(answer)}


@login_required
def benchmark_items_page(request, benchmark_id: int, benchmark_name: str):
    """One benchmark's items, base against fine-tuned, a page at a time (`?differs=1`: only
    the items where the two models differ)."""
    job = benchmark_job_get(user=request.user, pk=benchmark_id)
    result = job.results.filter(benchmark_name=benchmark_name).first()
    if result is None:
        raise Http404("No such benchmark in this job.")
    rows = []
    for item_id, sides in (result.detailed_results.get("items") or {}).items():
        base, tuned = _item_cell(sides.get("base")), _item_cell(sides.get("finetuned"))
        category = (sides.get("base") or {}).get("category") or ""
        gold = (sides.get("base") or {}).get("gold")
        differs = "finetuned" in sides and (base["correct"], base["score"]) != (tuned["correct"], tuned["score"])
        rows.append({"id": item_id, "category": category, "gold": gold, "base": base, "finetuned": tuned,
                     "differs": differs})
    only_differs = request.GET.get("differs") == "1"
    shown = [r for r in rows if r["differs"]] if only_differs else rows
    pages = max(1, math.ceil(len(shown) / ITEMS_PER_PAGE))
    page = min(max(1, _int(request.GET.get("page")) or 1), pages)
    return render(request, "evaluation/benchmark_items.html", {
        "job": job, "result": result, "rows": shown[(page - 1) * ITEMS_PER_PAGE:page * ITEMS_PER_PAGE],
        "total": len(rows), "shown": len(shown), "differing": sum(r["differs"] for r in rows),
        "only_differs": only_differs, "page": page, "pages": pages, "per_page": ITEMS_PER_PAGE,
        "has_finetuned": result.finetuned_score is not None})


# -- custom test sets -----------------------------------------------------------------------------------


def _custom_list(request, *, form: CustomBenchmarkForm | None = None,
                 dataset_form: CustomFromDatasetForm | None = None, status: int = 200) -> HttpResponse:
    return render(request, "evaluation/custom_list.html", {
        "sets": custom_benchmark_list(user=request.user).select_related("team", "source_dataset"),
        "form": form or CustomBenchmarkForm(user=request.user),
        "dataset_form": dataset_form or CustomFromDatasetForm(user=request.user),
        "open_form": "dataset" if dataset_form else "json"}, status=status)


@login_required
def custom_list_page(request):
    """GET: the team's sets and the two ways to make one; POST: one of them (`source=dataset`)."""
    if request.method != "POST":
        return _custom_list(request)
    from_dataset = request.POST.get("source") == "dataset"
    form = (CustomFromDatasetForm if from_dataset else CustomBenchmarkForm)(request.POST, user=request.user)
    page_forms = {"dataset_form" if from_dataset else "form": form}
    if not form.is_valid():
        return _custom_list(request, **page_forms, status=400)
    if from_dataset:
        team = resolve_team(request.user, dataset_get(user=request.user, pk=int(form.cleaned_data["dataset"])).team_id,
                            write=True)
    else:
        team = resolve_team(request.user, form.cleaned_data.get("team") or None, write=True)
    try:
        row = custom_benchmark_create(team=team, user=request.user, body=form.body())
    except NexusError as exc:
        form.add_service_error(exc)
        return _custom_list(request, **page_forms, status=exc.status_code)
    messages.success(request, f"Created the test set '{row.name}' ({len(row.test_cases)} cases).")
    return redirect("evaluation-custom", custom_id=row.pk)


@login_required
def custom_page(request, custom_id: int):
    custom = custom_benchmark_get(user=request.user, pk=custom_id)
    by_type = [(kind, [c for c in custom.test_cases if c["evaluation_type"] == kind]) for kind in TYPES]
    return render(request, "evaluation/custom_detail.html", {
        "custom": custom, "by_type": [(kind, cases) for kind, cases in by_type if cases],
        "can_write": _can_write(request.user, custom)})


@require_POST
@login_required
def custom_delete_page(request, custom_id: int):
    custom = custom_benchmark_get(user=request.user, pk=custom_id, write=True)
    custom_benchmark_delete(custom=custom)
    messages.success(request, f"Deleted the test set '{custom.name}'.")
    return redirect("evaluation-customs")


# -- the evaluation summary -----------------------------------------------------------------------------


@login_required
def summary_page(request, adapter_id: int):
    adapter = adapter_get(user=request.user, pk=adapter_id)
    summary = evaluation_summary(adapter=adapter)
    human, judge = summary["human"], summary["judge"]
    return render(request, "evaluation/summary.html", {
        "adapter": adapter, "summary": summary, "recommendation": RECOMMENDATIONS[summary["recommendation"]],
        "chart": benchmark_chart(summary["benchmarks"], chart_id="benchmark-chart",
                                 title="Latest score per benchmark: base and fine-tuned (change with its paired 95% "
                                       "interval)"),
        "human_chart": preference_chart(human, chart_id="human-preference", title="People's preference, 95% Wilson "
                                                                                  "intervals") if human["n"] else None,
        "human_winner": winner_sentence(human) if human["n"] else "",
        "judge_chart": preference_chart(judge, chart_id="judge-preference", title="Judge verdicts, 95% Wilson "
                                                                                  "intervals")
        if judge and judge["n"] else None,
        "judge_winner": winner_sentence(judge, what="verdicts") if judge and judge["n"] else ""})
