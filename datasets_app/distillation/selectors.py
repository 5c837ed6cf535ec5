"""Distillation reads."""
from __future__ import annotations

from django.db.models import QuerySet

from datasets_app.distillation.engine.templates import BUILTIN_TEMPLATES, PromptTemplate
from datasets_app.distillation.models import (
    DistillationItem,
    DistillationJob,
    DistillationTemplate,
    TeacherConnection,
    TeacherPrice,
)
from nexus.teams import get_for_user, visible_to


def distillation_job_list(*, user, team=None) -> QuerySet[DistillationJob]:
    qs = visible_to(DistillationJob.objects.all(), user)
    return qs.filter(team=team) if team is not None else qs


def distillation_job_get(*, user, pk: int, write: bool = False) -> DistillationJob:
    return get_for_user(DistillationJob.objects.select_related("team", "dataset"), user, pk=pk, write=write)


def distillation_items(*, job: DistillationJob, status: str = "", reason: str = "") -> QuerySet[DistillationItem]:
    """A job's items for review; `status` filters on the verdict after a person's review."""
    from django.db.models import Q

    qs = job.items.select_related("teacher").order_by("group", "teacher__position")
    if status:
        qs = qs.filter(Q(review=status) | Q(review="", status=status))
    if reason:
        qs = qs.filter(reason=reason)
    return qs


def teacher_connection_list(*, user, team=None) -> QuerySet[TeacherConnection]:
    qs = visible_to(TeacherConnection.objects.all(), user)
    return qs.filter(team=team) if team is not None else qs


def teacher_connection_get(*, user, pk: int, write: bool = False) -> TeacherConnection:
    return get_for_user(TeacherConnection.objects.select_related("team"), user, pk=pk, write=write)


def template_list(*, user, team=None) -> list[PromptTemplate]:
    """The built-in templates, then the team's own."""
    own = visible_to(DistillationTemplate.objects.all(), user)
    if team is not None:
        own = own.filter(team=team)
    return [*BUILTIN_TEMPLATES.values(), *(template_as_engine(t) for t in own)]


def template_as_engine(row: DistillationTemplate) -> PromptTemplate:
    return PromptTemplate(id=str(row.pk), name=row.name, description=row.description, system_prompt=row.system_prompt,
                          prompt=row.prompt, variables=row.variables, builtin=False)


def template_get(*, user, team, template_id: str | int, write: bool = False) -> PromptTemplate:
    """A built-in template by id, a template of any of the user's teams by number (as the list
    shows them), or `team`'s own by slug; 404 otherwise, 403 when a viewer asks to write."""
    from django.http import Http404

    text = str(template_id)
    if text in BUILTIN_TEMPLATES and not write:
        return BUILTIN_TEMPLATES[text]
    if text.isdecimal() and len(text) < 18:
        pk = int(text)
    else:
        pk = DistillationTemplate.objects.filter(team=team, slug=text).values_list("pk", flat=True).first()
        if pk is None:
            raise Http404("No such template.")
    return template_as_engine(get_for_user(DistillationTemplate.objects.all(), user, pk=pk, write=write))


def price_table() -> dict[str, tuple[float, float]]:
    """The operator's prices (rows seeded with the list prices by a migration, edited and added in the
    admin) over the built-in list prices: a model without a row of its own keeps its list price."""
    from datasets_app.distillation.engine.pricing import DEFAULT_PRICES

    table = dict(DEFAULT_PRICES)
    table.update({p.model: (float(p.input_per_mtok), float(p.output_per_mtok)) for p in TeacherPrice.objects.all()})
    return table


def distillation_job_log(*, job: DistillationJob, upto: int | None = None, limit: int = 500) -> list:
    """The job's log and status lines (not its once-a-second metric events), oldest first, the
    newest `limit` up to seq `upto` (where a page's websocket resumes)."""
    from nexus.models import JobEvent

    events = JobEvent.objects.filter(job_kind="distillation", job_id=job.pk).exclude(type=JobEvent.Type.METRIC)
    if upto is not None:
        events = events.filter(seq__lte=upto)
    return list(reversed(events.order_by("-seq")[:limit]))
