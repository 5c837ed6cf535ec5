"""Distillation's REST API (design section 7.2): jobs, their preview, review and approval,
templates, saved teacher connections and their test, the cost estimate and the price table.
Keys go in, never out: a teacher shows `key_last4` only."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets_app.distillation.models import (
    DistillationItem,
    DistillationJob,
    DistillationTeacher,
    Provider,
    TeacherConnection,
)
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
    template_delete,
    template_preview,
)
from nexus.api_utils import json_body, request_team, request_team_filter
from nexus.errors import NexusError
from nexus.pagination import PAGE_PARAMETERS, paginate, paginated
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


# -- request bodies, as the schema documents them (the services check them, down to the field) --------


class TeacherConfigSerializer(serializers.Serializer):
    provider = serializers.ChoiceField(choices=Provider.choices, required=False,
                                       help_text="default: anthropic for claude-* models, deployed for 'deployed:<id>', "
                                                 "else openai")
    model = serializers.CharField(required=False, help_text='e.g. "gpt-4o-mini", "claude-haiku-4-5", "deployed:7"')
    api_key = serializers.CharField(required=False, write_only=True, help_text="encrypted at rest, never returned")
    base_url = serializers.CharField(required=False, help_text="an OpenAI-compatible server or an Anthropic proxy; "
                                                               "its host must be on NEXUS_TEACHER_ALLOWED_HOSTS")
    temperature = serializers.FloatField(required=False, default=0.7, min_value=0, max_value=2)
    max_tokens = serializers.IntegerField(required=False, default=2048, min_value=1)
    deployment_id = serializers.IntegerField(required=False, help_text="provider deployed: the team's deployment")
    connection_id = serializers.IntegerField(required=False, help_text="a saved teacher connection instead of the above")


class PromptsConfigSerializer(serializers.Serializer):
    prompts = serializers.ListField(child=serializers.JSONField(), required=False,
                                    help_text='strings, or {"prompt", "input", "system"} objects')
    dataset_id = serializers.IntegerField(required=False, help_text="take the prompts from a ready dataset")
    template_id = serializers.CharField(required=False, help_text="a built-in template id or the team's own")
    template = serializers.DictField(required=False, help_text='an inline template: {"prompt": "... {topic} ...", '
                                                              '"variables": {"topic": [...]}, "system_prompt": "..."}')
    variables = serializers.DictField(required=False, help_text="template variable -> value or list of values")
    num_examples = serializers.IntegerField(required=False, min_value=1)
    include_reasoning = serializers.BooleanField(required=False, default=False)
    seed = serializers.IntegerField(required=False, default=0)


class DistillationJobCreateSerializer(serializers.Serializer):
    name = serializers.CharField()
    teacher_config = TeacherConfigSerializer(required=False)
    teacher_configs = TeacherConfigSerializer(many=True, required=False, help_text="several teachers")
    multi_teacher = serializers.ChoiceField(choices=["best", "round_robin"], required=False, default="best")
    judge_config = TeacherConfigSerializer(required=False, help_text="default: the first teacher")
    prompts_config = PromptsConfigSerializer()
    mode = serializers.ChoiceField(choices=["response", "rephrase", "expand", "negative", "back_translate"],
                                   required=False, default="response")
    pivot_language = serializers.CharField(required=False, default="French")
    system_prompt = serializers.CharField(required=False, allow_blank=True)
    quality_threshold = serializers.FloatField(required=False, default=0.0, min_value=0, max_value=1)
    quality = serializers.DictField(required=False, help_text="min_words (3), check_language (true), near_threshold")
    batch_size = serializers.IntegerField(required=False, default=5, min_value=1, max_value=64)
    rate_limit = serializers.IntegerField(required=False, default=60, min_value=1, help_text="requests a minute")
    output_format = serializers.ChoiceField(choices=["alpaca", "sharegpt", "chatml"], required=False, default="alpaca")
    description = serializers.CharField(required=False, allow_blank=True)
    team = serializers.CharField(required=False)


class ReviewSerializer(serializers.Serializer):
    decision = serializers.ChoiceField(choices=["accept", "reject", "reset"])


class ApproveSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True)


class ApprovedSerializer(serializers.Serializer):
    dataset_id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField()
    origin = serializers.DictField()


class TemplateSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="a built-in's name (e.g. coding-assistant) or the team template's number")
    name = serializers.CharField()
    description = serializers.CharField()
    system_prompt = serializers.CharField()
    prompt = serializers.CharField(help_text="{name} placeholders")
    variables = serializers.DictField(help_text="name -> list of values")
    builtin = serializers.BooleanField()


class TemplateInputSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField(required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    system_prompt = serializers.CharField(required=False, allow_blank=True)
    prompt = serializers.CharField(help_text="{name} placeholders")
    variables = serializers.DictField(required=False, help_text="name -> list of values")
    team = serializers.CharField(required=False)


class TemplatePreviewInputSerializer(serializers.Serializer):
    prompt = serializers.CharField(required=False)
    system_prompt = serializers.CharField(required=False, allow_blank=True)
    variables = serializers.DictField(required=False)
    template_id = serializers.CharField(required=False)
    limit = serializers.IntegerField(required=False, default=5, min_value=1, max_value=50)


class TemplatePreviewSerializer(serializers.Serializer):
    prompts = serializers.ListField(child=serializers.CharField())
    variables = serializers.ListField(child=serializers.DictField())
    system_prompt = serializers.CharField()
    combinations = serializers.IntegerField()
    fields = serializers.ListField(child=serializers.CharField())


class ConnectionInputSerializer(TeacherConfigSerializer):
    name = serializers.CharField()
    team = serializers.CharField(required=False)


class ConnectionUpdateSerializer(TeacherConfigSerializer):
    name = serializers.CharField(required=False)


class ConnectionCheckSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()
    problem = serializers.CharField(help_text="key | unreachable | model | address | other, when not ok")
    latency_ms = serializers.IntegerField()


class DistillationEstimateSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    prompts_to_generate = serializers.IntegerField()
    requests = serializers.IntegerField()
    prompt_tokens_avg = serializers.FloatField()
    per_teacher = serializers.ListField(child=serializers.DictField())
    cost_usd = serializers.DictField(allow_null=True, help_text="low, expected, high")
    unpriced_models = serializers.ListField(child=serializers.CharField())
    minutes_at_rate_limit = serializers.FloatField()
    note = serializers.CharField()


class PriceSerializer(serializers.Serializer):
    model = serializers.CharField()
    input_per_mtok = serializers.FloatField()
    output_per_mtok = serializers.FloatField()


def template_data(t) -> dict:
    return {"id": t.id, "name": t.name, "description": t.description, "system_prompt": t.system_prompt,
            "prompt": t.prompt, "variables": t.variables, "builtin": t.builtin}


def check_data(result) -> dict:
    return {"ok": result.ok, "message": result.message, "problem": result.problem, "latency_ms": result.latency_ms}


class DistillationJobListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=paginated(JobListItemSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        jobs = distillation_job_list(user=request.user, team=request_team_filter(request))
        return paginate(request, jobs, lambda rows: JobListItemSerializer(rows, many=True).data)

    @extend_schema(request=DistillationJobCreateSerializer, responses={201: JobOutputSerializer},
                   description="The design's body: name, teacher_config (or teacher_configs), prompts_config "
                               "({prompts} | {dataset_id} | {template_id, variables}; num_examples, include_reasoning), "
                               "system_prompt, quality_threshold, batch_size, rate_limit, output_format; and mode, "
                               "multi_teacher, judge_config, quality.")
    def post(self, request):
        team = request_team(request, write=True)
        job = distillation_job_create(team=team, user=request.user, body=json_body(request))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)



class DistillationJobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request, distillation_id: int):
        return Response({**JobOutputSerializer(distillation_job_get(user=request.user, pk=distillation_id)).data,
                         "counts": distillation_counts(job_id=distillation_id)})

    @extend_schema(responses={202: JobOutputSerializer}, description="Cancel the job (answers so far are kept).")
    def delete(self, request, distillation_id: int):
        job = distillation_job_cancel(job=distillation_job_get(user=request.user, pk=distillation_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class DistillationPreviewApi(APIView):
    @extend_schema(parameters=[*PAGE_PARAMETERS, OpenApiParameter("status", str, enum=["accepted", "rejected", "pending"]),
                               OpenApiParameter("reason", str)], responses=paginated(ItemOutputSerializer))
    def get(self, request, distillation_id: int):
        job = distillation_job_get(user=request.user, pk=distillation_id)
        wanted = request.query_params.get("status", "")
        if wanted not in ("", "accepted", "rejected", "pending"):
            raise NexusError(f"status: must be accepted, rejected or pending, got {wanted[:40]!r}",
                             code="validation_error", details={"status": wanted[:40]})
        items = distillation_items(job=job, status=wanted, reason=request.query_params.get("reason", "")[:32])
        return paginate(request, items, lambda rows: ItemOutputSerializer(rows, many=True).data, default=20)


class DistillationItemReviewApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=ReviewSerializer, responses=ItemOutputSerializer)
    def post(self, request, distillation_id: int, item_id: int):
        job = distillation_job_get(user=request.user, pk=distillation_id, write=True)
        item = distillation_item_review(job=job, item_id=item_id, user=request.user,
                                        decision=str(json_body(request).get("decision", "")))
        return Response(ItemOutputSerializer(item).data)


class DistillationApproveApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=ApproveSerializer, responses={201: ApprovedSerializer})
    def post(self, request, distillation_id: int):
        job = distillation_job_get(user=request.user, pk=distillation_id, write=True)
        body = json_body(request)
        name = body.get("name", "")
        if not isinstance(name, str):
            raise NexusError("name: must be a string", code="validation_error", details={"name": "not a string"})
        dataset = distillation_job_approve(job=job, user=request.user, name=name,
                                           description=str(body.get("description", ""))[:5000])
        return Response({"dataset_id": dataset.pk, "name": dataset.name, "status": dataset.status,
                         "origin": dataset.origin}, status=status.HTTP_201_CREATED)


class DistillationEstimateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=DistillationJobCreateSerializer, responses=DistillationEstimateSerializer,
                   description="Requests, tokens and cost of a job body, before it starts.")
    def post(self, request):
        team = request_team(request, write=False)
        return Response(job_estimate(request=job_request_parse(team=team, user=request.user, body=json_body(request))))


class DistillationTemplateListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=TemplateSerializer(many=True))
    def get(self, request):
        rows = [template_data(t) for t in template_list(user=request.user, team=request_team_filter(request))]
        return Response({"count": len(rows), "next": None, "previous": None, "results": rows})

    @extend_schema(request=TemplateInputSerializer, responses={201: TemplateSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        row = template_create(team=team, user=request.user, raw=json_body(request))
        return Response({**template_data(template_get(user=request.user, team=team, template_id=row.pk)),
                         "slug": row.slug}, status=status.HTTP_201_CREATED)


class DistillationTemplateDetailApi(APIView):
    @extend_schema(responses=TemplateSerializer)
    def get(self, request, template_id: str):
        team = request_team(request, write=False)
        return Response(template_data(template_get(user=request.user, team=team, template_id=template_id)))

    @extend_schema(responses={204: None})
    def delete(self, request, template_id: str):
        from datasets_app.distillation.models import DistillationTemplate

        team = request_team(request, write=True)
        template = template_get(user=request.user, team=team, template_id=template_id, write=True)
        template_delete(template=get_for_user(DistillationTemplate.objects.all(), request.user, pk=int(template.id),
                                              write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DistillationTemplatePreviewApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=TemplatePreviewInputSerializer, responses=TemplatePreviewSerializer,
                   description="the first prompts a template renders and how many combinations it has")
    def post(self, request):
        body = json_body(request)
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
                                         limit=min(int(body.get("limit") or 5) if str(body.get("limit", "5")).isdecimal()
                                                   else 5, 50)))


class TeacherConnectionListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=paginated(ConnectionOutputSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        rows = teacher_connection_list(user=request.user, team=request_team_filter(request))
        return paginate(request, rows, lambda r: ConnectionOutputSerializer(r, many=True).data)

    @extend_schema(request=ConnectionInputSerializer, responses={201: ConnectionOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        conn = teacher_connection_create(team=team, user=request.user, raw=json_body(request))
        return Response(ConnectionOutputSerializer(conn).data, status=status.HTTP_201_CREATED)


class TeacherConnectionDetailApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=ConnectionOutputSerializer)
    def get(self, request, connection_id: int):
        return Response(ConnectionOutputSerializer(teacher_connection_get(user=request.user, pk=connection_id)).data)

    @extend_schema(request=ConnectionUpdateSerializer, responses=ConnectionOutputSerializer)
    def patch(self, request, connection_id: int):
        conn = teacher_connection_get(user=request.user, pk=connection_id, write=True)
        conn = teacher_connection_update(connection=conn, user=request.user, raw=json_body(request))
        return Response(ConnectionOutputSerializer(conn).data)

    @extend_schema(responses={204: None})
    def delete(self, request, connection_id: int):
        teacher_connection_delete(connection=teacher_connection_get(user=request.user, pk=connection_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeacherConnectionTestApi(APIView):
    """POST connections/{id}/test: one cheap call with a saved connection."""

    @extend_schema(request=None, responses=ConnectionCheckSerializer)
    def post(self, request, connection_id: int):
        conn = teacher_connection_get(user=request.user, pk=connection_id, write=True)
        return Response(check_data(teacher_connection_test(connection=conn)))


class TeacherConfigTestApi(APIView):
    """POST connections/test with a teacher body (not saved): what the new-job form's button calls."""

    parser_classes = [StrictJSONParser]

    @extend_schema(request=TeacherConfigSerializer, responses=ConnectionCheckSerializer,
                   operation_id="v1_finetune_distillation_teacher_config_test")
    def post(self, request):
        team = request_team(request, write=True)
        body = {k: v for k, v in json_body(request).items() if k not in ("team", "name")}
        parsed = teacher_parse(team=team, user=request.user, raw=body)
        row = DistillationTeacher(**parsed.fields())
        return Response(check_data(teacher_check(row=row)))


class PriceListApi(APIView):
    """The operator's price table (USD per million tokens), edited in the admin."""

    @extend_schema(responses=PriceSerializer(many=True))
    def get(self, request):
        rows = [{"model": m, "input_per_mtok": i, "output_per_mtok": o} for m, (i, o) in sorted(price_table().items())]
        return Response({"count": len(rows), "next": None, "previous": None, "results": rows})
