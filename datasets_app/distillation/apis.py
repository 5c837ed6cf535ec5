"""Distillation's REST API (design section 7.2): jobs, their preview, review and approval,
templates, saved teacher connections and their test, the cost estimate and the price table.
Keys go in, never out: a teacher shows `key_last4` only."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets_app.distillation.models import DistillationItem, DistillationJob, DistillationTeacher, TeacherConnection
from datasets_app.distillation.runner import distillation_counts
from datasets_app.distillation.selectors import (
    distillation_items,
    distillation_job_get,
    distillation_job_list,
    price_table,
    teacher_connection_get,
    teacher_connection_list,
    template_get,
    template_list,
)
from datasets_app.distillation.services import (
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
    teacher_connection_update,
    teacher_parse,
    template_create,
    template_preview,
)
from nexus.api_utils import request_team, request_team_filter
from nexus.errors import NexusError
from nexus.pagination import PAGE_PARAMETERS, paginate
from nexus.parsers import StrictJSONParser
from nexus.teams import get_for_user

TEACHER_FIELDS = ["provider", "model", "base_url", "deployment_id", "key_last4", "temperature", "max_tokens"]


class TeacherOutputSerializer(serializers.ModelSerializer):
    label = serializers.CharField(read_only=True)

    class Meta:
        model = DistillationTeacher
        fields = ["id", "role", "position", "label", *TEACHER_FIELDS, "connection_id", "requests", "tokens_in",
                  "tokens_out", "cost_usd"]


class JobOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    progress = serializers.FloatField(read_only=True)
    dataset_id = serializers.IntegerField(allow_null=True)
    teachers = TeacherOutputSerializer(many=True, read_only=True)
    error = serializers.CharField(source="error_message")

    class Meta:
        model = DistillationJob
        fields = ["id", "team", "name", "status", "mode", "progress", "num_prompts", "num_items",
                  "prompts_to_generate", "generated", "accepted", "rejected", "requests", "tokens_in", "tokens_out",
                  "cost_usd", "cost_known", "error", "cancel_requested", "output_format", "config", "teachers",
                  "dataset_id", "approved_at", "worker", "started_at", "completed_at", "created_at", "updated_at"]


class JobListItemSerializer(JobOutputSerializer):
    class Meta(JobOutputSerializer.Meta):
        fields = [f for f in JobOutputSerializer.Meta.fields if f not in ("config", "teachers")]


class ItemOutputSerializer(serializers.ModelSerializer):
    teacher = serializers.CharField(source="teacher.label")
    response = serializers.SerializerMethodField()
    status = serializers.CharField(source="final_status", help_text="accepted | rejected | pending, after review")
    filter_status = serializers.CharField(source="status", help_text="the filters' verdict before any review")

    class Meta:
        model = DistillationItem
        fields = ["id", "group", "prompt", "input", "response", "teacher", "status", "filter_status", "reason",
                  "detail", "score", "judge_reason", "review", "record", "calls", "reference", "source_index",
                  "variables", "tokens_in", "tokens_out", "cost_usd", "updated_at"]

    def get_response(self, item: DistillationItem) -> str:
        if item.record:
            return item.record.get("output", "")
        steps = [v for k, v in (item.calls or {}).items() if k != "judge"]
        return steps[-1].get("text", "") if steps else ""


class ConnectionOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    label = serializers.CharField(read_only=True)

    class Meta:
        model = TeacherConnection
        fields = ["id", "team", "name", "label", *TEACHER_FIELDS, "last_check", "created_at", "updated_at"]


def template_data(t) -> dict:
    return {"id": t.id, "name": t.name, "description": t.description, "system_prompt": t.system_prompt,
            "prompt": t.prompt, "variables": t.variables, "builtin": t.builtin}


def check_data(result) -> dict:
    return {"ok": result.ok, "message": result.message, "problem": result.problem, "latency_ms": result.latency_ms}


class DistillationJobListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=JobListItemSerializer(many=True), parameters=PAGE_PARAMETERS)
    def get(self, request):
        jobs = distillation_job_list(user=request.user, team=request_team_filter(request))
        return paginate(request, jobs, lambda rows: JobListItemSerializer(rows, many=True).data)

    @extend_schema(request=dict, responses={201: JobOutputSerializer},
                   description="The design's body: name, teacher_config (or teacher_configs), prompts_config "
                               "({prompts} | {dataset_id} | {template_id, variables}; num_examples, include_reasoning), "
                               "system_prompt, quality_threshold, batch_size, rate_limit, output_format; and mode, "
                               "multi_teacher, judge_config, quality.")
    def post(self, request):
        team = request_team(request, write=True)
        job = distillation_job_create(team=team, user=request.user, body=_body(request))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


def _body(request) -> dict:
    if not isinstance(request.data, dict):
        raise NexusError("body: must be a JSON object", code="validation_error", details={"body": "not an object"})
    return dict(request.data)


class DistillationJobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request, job_id: int):
        return Response({**JobOutputSerializer(distillation_job_get(user=request.user, pk=job_id)).data,
                         "counts": distillation_counts(job_id=job_id)})

    @extend_schema(responses={202: JobOutputSerializer}, description="Cancel the job (answers so far are kept).")
    def delete(self, request, job_id: int):
        job = distillation_job_cancel(job=distillation_job_get(user=request.user, pk=job_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class DistillationPreviewApi(APIView):
    @extend_schema(parameters=[*PAGE_PARAMETERS, OpenApiParameter("status", str, enum=["accepted", "rejected", "pending"]),
                               OpenApiParameter("reason", str)], responses=ItemOutputSerializer(many=True))
    def get(self, request, job_id: int):
        job = distillation_job_get(user=request.user, pk=job_id)
        wanted = request.query_params.get("status", "")
        if wanted not in ("", "accepted", "rejected", "pending"):
            raise NexusError(f"status: must be accepted, rejected or pending, got {wanted[:40]!r}",
                             code="validation_error", details={"status": wanted[:40]})
        items = distillation_items(job=job, status=wanted, reason=request.query_params.get("reason", "")[:32])
        return paginate(request, items, lambda rows: ItemOutputSerializer(rows, many=True).data, default=20)


class DistillationItemReviewApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=dict, responses=ItemOutputSerializer,
                   description='{"decision": "accept" | "reject" | "reset"}')
    def post(self, request, job_id: int, item_id: int):
        job = distillation_job_get(user=request.user, pk=job_id, write=True)
        item = distillation_item_review(job=job, item_id=item_id, user=request.user,
                                        decision=str(_body(request).get("decision", "")))
        return Response(ItemOutputSerializer(item).data)


class DistillationApproveApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=dict, responses={201: dict}, description='{"name": "..."} -> {"dataset_id": N, ...}')
    def post(self, request, job_id: int):
        job = distillation_job_get(user=request.user, pk=job_id, write=True)
        body = _body(request)
        name = body.get("name", "")
        if not isinstance(name, str):
            raise NexusError("name: must be a string", code="validation_error", details={"name": "not a string"})
        dataset = distillation_job_approve(job=job, user=request.user, name=name,
                                           description=str(body.get("description", ""))[:5000])
        return Response({"dataset_id": dataset.pk, "name": dataset.name, "status": dataset.status,
                         "origin": dataset.origin}, status=status.HTTP_201_CREATED)


class DistillationEstimateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=dict, responses=dict, description="Requests, tokens and cost of a job body, before it starts.")
    def post(self, request):
        team = request_team(request, write=False)
        return Response(job_estimate(request=job_request_parse(team=team, user=request.user, body=_body(request))))


class DistillationTemplateListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=dict(many=True))
    def get(self, request):
        rows = [template_data(t) for t in template_list(user=request.user, team=request_team_filter(request))]
        return Response({"count": len(rows), "next": None, "previous": None, "results": rows})

    @extend_schema(request=dict, responses={201: dict})
    def post(self, request):
        team = request_team(request, write=True)
        row = template_create(team=team, user=request.user, raw=_body(request))
        return Response({**template_data(template_get(user=request.user, team=team, template_id=row.pk)),
                         "slug": row.slug}, status=status.HTTP_201_CREATED)


class DistillationTemplateDetailApi(APIView):
    def get(self, request, template_id: str):
        team = request_team(request, write=False)
        return Response(template_data(template_get(user=request.user, team=team, template_id=template_id)))

    def delete(self, request, template_id: str):
        from datasets_app.distillation.models import DistillationTemplate

        team = request_team(request, write=True)
        template = template_get(user=request.user, team=team, template_id=template_id, write=True)
        row = get_for_user(DistillationTemplate.objects.all(), request.user, pk=int(template.id), write=True)
        row.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class DistillationTemplatePreviewApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=dict, responses=dict, description='{"prompt", "variables", "system_prompt"} -> the first '
                                                             'prompts it renders and how many combinations it has')
    def post(self, request):
        body = _body(request)
        if body.get("template_id") is not None and "prompt" not in body:
            team = request_team(request, write=False)
            t = template_get(user=request.user, team=team, template_id=body["template_id"])
            body = {"prompt": t.prompt, "system_prompt": t.system_prompt,
                    "variables": {**t.variables, **(body.get("variables") or {})}}
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise NexusError("prompt: must be a string", code="validation_error", details={"prompt": "not a string"})
        return Response(template_preview(prompt=prompt, variables=body.get("variables") or {},
                                         system_prompt=str(body.get("system_prompt") or ""),
                                         limit=min(int(body.get("limit") or 5) if str(body.get("limit", "5")).isdigit()
                                                   else 5, 50)))


class TeacherConnectionListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=ConnectionOutputSerializer(many=True), parameters=PAGE_PARAMETERS)
    def get(self, request):
        rows = teacher_connection_list(user=request.user, team=request_team_filter(request))
        return paginate(request, rows, lambda r: ConnectionOutputSerializer(r, many=True).data)

    @extend_schema(request=dict, responses={201: ConnectionOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        conn = teacher_connection_create(team=team, user=request.user, raw=_body(request))
        return Response(ConnectionOutputSerializer(conn).data, status=status.HTTP_201_CREATED)


class TeacherConnectionDetailApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=ConnectionOutputSerializer)
    def get(self, request, connection_id: int):
        return Response(ConnectionOutputSerializer(teacher_connection_get(user=request.user, pk=connection_id)).data)

    @extend_schema(request=dict, responses=ConnectionOutputSerializer)
    def patch(self, request, connection_id: int):
        conn = teacher_connection_get(user=request.user, pk=connection_id, write=True)
        conn = teacher_connection_update(connection=conn, user=request.user, raw=_body(request))
        return Response(ConnectionOutputSerializer(conn).data)

    def delete(self, request, connection_id: int):
        teacher_connection_delete(connection=teacher_connection_get(user=request.user, pk=connection_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeacherConnectionTestApi(APIView):
    """POST connections/{id}/test: one cheap call with a saved connection."""

    def post(self, request, connection_id: int):
        conn = teacher_connection_get(user=request.user, pk=connection_id, write=True)
        return Response(check_data(teacher_connection_test(connection=conn)))


class TeacherConfigTestApi(APIView):
    """POST connections/test with a teacher body (not saved): what the new-job form's button calls."""

    parser_classes = [StrictJSONParser]

    def post(self, request):
        team = request_team(request, write=True)
        body = {k: v for k, v in _body(request).items() if k not in ("team", "name")}
        parsed = teacher_parse(team=team, user=request.user, raw=body)
        row = DistillationTeacher(**parsed.fields())
        return Response(check_data(teacher_check(row=row)))


class PriceListApi(APIView):
    """The operator's price table (USD per million tokens), edited in the admin."""

    def get(self, request):
        rows = [{"model": m, "input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in sorted(price_table().items())]
        return Response({"count": len(rows), "next": None, "previous": None, "results": rows})
