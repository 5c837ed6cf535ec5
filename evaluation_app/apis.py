"""Evaluation's REST API (design 10.6): comparison sessions (side by side and blind, with human
ratings), LLM-judge runs and speed tests; plus the adapter page's quick comparison.

Blind sessions: until every comparison is rated, nothing at the comparison level says who wrote
`response_a` and `response_b` (no model, adapter, base/fine-tuned field, no timing)."""
from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.selectors import adapter_get
from datasets_app.distillation.apis import TeacherConfigSerializer
from evaluation_app.engine.judge import CRITERIA, CRITERIA_DESCRIPTIONS, DEFAULT_RUBRIC, render_template
from evaluation_app.models import ComparisonSession, JudgeRun, PerformanceTest
from evaluation_app.selectors import (
    judge_evaluations,
    judge_run_get,
    judge_run_list,
    judge_summary,
    performance_get,
    performance_list,
    session_comparisons,
    session_export,
    session_get,
    session_list,
    session_revealed,
    session_summary,
    sides_view,
)
from evaluation_app.services import (
    SAMPLING_DEFAULTS,
    adapter_compare,
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
from nexus.api_utils import json_body, int_query_param, request_team, request_team_filter
from nexus.errors import NexusError
from nexus.pagination import PAGE_PARAMETERS, page_bounds, paginate, paginated, with_links
from nexus.parsers import StrictJSONParser



def _optional_int(request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    if not raw.isdecimal():
        raise NexusError(f"{name}: must be an id, got {raw[:40]!r}", code="validation_error", details={name: raw[:40]})
    return int(raw)


# -- comparison sessions ----------------------------------------------------------------------------


class SideSerializer(serializers.Serializer):
    role = serializers.CharField(help_text="base | finetuned: how preferences and summaries name it")
    type = serializers.CharField(help_text="base | adapter | merged | deployment")
    label = serializers.CharField()
    is_finetuned = serializers.BooleanField()
    adapter_id = serializers.IntegerField(allow_null=True)
    export_id = serializers.IntegerField(allow_null=True)
    deployment_id = serializers.IntegerField(allow_null=True)


class SessionSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    adapter_id = serializers.IntegerField(allow_null=True)
    dataset_id = serializers.IntegerField(allow_null=True)
    revealed = serializers.SerializerMethodField()
    models = serializers.SerializerMethodField()
    num_comparisons = serializers.SerializerMethodField()

    class Meta:
        model = ComparisonSession
        fields = ["id", "team", "name", "description", "comparison_type", "base_model", "adapter_id", "models",
                  "dataset_id", "system_prompt", "sampling_params", "raters_required", "status", "progress", "stage",
                  "error", "revealed", "num_comparisons", "runs", "worker", "created_at", "started_at", "completed_at",
                  "updated_at"]

    def get_revealed(self, session: ComparisonSession) -> bool:
        return session_revealed(session=session)

    def get_models(self, session: ComparisonSession) -> list[dict]:
        return sides_view(session)

    def get_num_comparisons(self, session: ComparisonSession) -> int:
        return session.comparisons.count()


class ModelResponseSerializer(serializers.Serializer):
    response = serializers.CharField()
    tokens_generated = serializers.IntegerField()
    finish_reason = serializers.CharField()
    model_id = serializers.CharField(required=False, help_text="not in a blind session before it is revealed")
    model_name = serializers.CharField(required=False)
    is_finetuned = serializers.BooleanField(required=False)
    adapter_id = serializers.IntegerField(required=False, allow_null=True)
    generation_time_ms = serializers.FloatField(required=False)
    tokens_per_second = serializers.FloatField(required=False)
    prompt_tokens = serializers.IntegerField(required=False)
    turns = serializers.ListField(child=serializers.CharField(), required=False,
                                  help_text="conversation: every answer this model gave, in order")


class ComparisonSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    index = serializers.IntegerField()
    prompt = serializers.CharField()
    messages = serializers.ListField(child=serializers.DictField())
    status = serializers.CharField(help_text="pending | done | failed")
    error = serializers.CharField()
    response_a = ModelResponseSerializer(allow_null=True)
    response_b = ModelResponseSerializer(allow_null=True)
    num_ratings = serializers.IntegerField()
    my_rating = serializers.DictField(allow_null=True, help_text="your rating, in the A/B terms you saw")
    a_is = serializers.CharField(required=False, help_text="base | finetuned; once revealed (or not blind)")
    base_response = ModelResponseSerializer(required=False)
    finetuned_response = ModelResponseSerializer(required=False)
    ratings = serializers.ListField(child=serializers.DictField(), required=False, help_text="everyone's, once revealed")


class SessionDetailSerializer(SessionSerializer):
    comparisons = serializers.SerializerMethodField()
    summary = serializers.SerializerMethodField()

    class Meta(SessionSerializer.Meta):
        fields = [*SessionSerializer.Meta.fields, "summary", "comparisons"]

    def get_comparisons(self, session: ComparisonSession) -> list[dict]:
        return self.context["comparisons"]

    def get_summary(self, session: ComparisonSession) -> dict:
        return session_summary(session=session)


class ComparisonModelSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["base", "adapter", "merged", "deployment"])
    base_model = serializers.CharField(required=False, help_text="type base: a base model's name (or id)")
    adapter_id = serializers.IntegerField(required=False, help_text="type adapter: base + this adapter's GGUF")
    export_id = serializers.IntegerField(required=False, help_text="type merged: a verified merged-model GGUF export")
    deployment_id = serializers.IntegerField(required=False, help_text="type deployment: a running deployment")


class SamplingSerializer(serializers.Serializer):
    temperature = serializers.FloatField(required=False, default=SAMPLING_DEFAULTS["temperature"])
    top_p = serializers.FloatField(required=False, default=SAMPLING_DEFAULTS["top_p"])
    top_k = serializers.IntegerField(required=False, default=SAMPLING_DEFAULTS["top_k"])
    repeat_penalty = serializers.FloatField(required=False, default=SAMPLING_DEFAULTS["repeat_penalty"])
    max_tokens = serializers.IntegerField(required=False, default=SAMPLING_DEFAULTS["max_tokens"])
    seed = serializers.IntegerField(required=False, help_text="each prompt's seed is seed + its index, the same for "
                                                              "both models; default: drawn at random")


class SessionCreateSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(required=False, allow_blank=True)
    comparison_type = serializers.ChoiceField(choices=ComparisonSession.Type.choices, required=False, default="batch")
    base_model = serializers.CharField(required=False, help_text="default: the adapter's base model")
    adapter_id = serializers.IntegerField(required=False, help_text="compared against its base model, unless `models`")
    models = ComparisonModelSerializer(many=True, required=False, help_text="any two models instead: the first is "
                                                                            "compared as the base")
    test_prompts = serializers.ListField(child=serializers.JSONField(), required=False,
                                         help_text="strings; conversation: lists of messages or of user turns")
    dataset_id = serializers.IntegerField(required=False, help_text="the prompts of this dataset's test split")
    num_prompts = serializers.IntegerField(required=False, min_value=1, help_text="with dataset_id: at most this many")
    system_prompt = serializers.CharField(required=False, allow_blank=True)
    sampling_params = SamplingSerializer(required=False)
    raters_required = serializers.IntegerField(required=False, default=1, min_value=1,
                                               help_text="blind: ratings per comparison before it is revealed")
    run = serializers.BooleanField(required=False, default=False, help_text="queue the run at once")
    team = serializers.CharField(required=False)


class PromptsAddSerializer(serializers.Serializer):
    prompts = serializers.ListField(child=serializers.JSONField())
    run = serializers.BooleanField(required=False, default=False)


class PromptsAddedSerializer(serializers.Serializer):
    added = serializers.IntegerField()
    comparison_ids = serializers.ListField(child=serializers.IntegerField())


class RateSerializer(serializers.Serializer):
    comparison_id = serializers.IntegerField()
    preferred = serializers.ChoiceField(choices=["A", "B", "tie"])
    ratings = serializers.DictField(required=False, help_text='{"A": {criterion: 1-5}, "B": {...}} over '
                                                              + ", ".join(CRITERIA))
    reason = serializers.CharField(required=False, allow_blank=True)


class RatedSerializer(serializers.Serializer):
    comparison_id = serializers.IntegerField()
    my_rating = serializers.DictField()
    revealed = serializers.BooleanField()
    progress = serializers.DictField()


def _session_detail(request, session: ComparisonSession) -> dict:
    limit, offset = page_bounds(request, default=50, most=500)
    wanted = request.query_params.get("status", "")
    if wanted not in ("", "pending", "done", "failed"):
        raise NexusError(f"status: must be pending, done or failed, got {wanted[:40]!r}", code="validation_error",
                         details={"status": wanted[:40]})
    total, rows = session_comparisons(session=session, user=request.user, status=wanted, offset=offset, limit=limit,
                                      unrated_by_me=request.query_params.get("unrated") in ("1", "true"))
    body = SessionDetailSerializer(session, context={"comparisons": rows}).data
    return with_links(request, {**body, "count": total, "offset": offset, "limit": limit})


class SessionListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=paginated(SessionSerializer),
                   parameters=[*PAGE_PARAMETERS, OpenApiParameter("adapter_id", int)])
    def get(self, request):
        rows = session_list(user=request.user, team=request_team_filter(request),
                            adapter_id=_optional_int(request, "adapter_id"))
        return paginate(request, rows, lambda page: SessionSerializer(page, many=True).data)

    @extend_schema(request=SessionCreateSerializer, responses={201: SessionDetailSerializer},
                   description="The design's ComparisonSession: name, description, comparison_type (single, batch, "
                               "conversation, blind), base_model, adapter_id, test_prompts (or dataset_id: its test "
                               "split), system_prompt, sampling_params; or `models`, any two of base, adapter, merged "
                               "GGUF export and deployment. POST .../run starts it.")
    def post(self, request):
        team = request_team(request, write=True)
        session = session_create(team=team, user=request.user, body=json_body(request))
        return Response(_session_detail(request, session), status=status.HTTP_201_CREATED)


class SessionDetailApi(APIView):
    @extend_schema(responses=SessionDetailSerializer,
                   parameters=[*PAGE_PARAMETERS, OpenApiParameter("status", str, enum=["pending", "done", "failed"]),
                               OpenApiParameter("unrated", bool, description="only comparisons you have not rated")],
                   description="The session, its summary and a page of its comparisons (blind: A/B only until "
                               "every comparison is rated).")
    def get(self, request, session_id: int):
        return Response(_session_detail(request, session_get(user=request.user, pk=session_id)))

    @extend_schema(responses={204: None}, description="Delete the session, its comparisons, ratings and judge runs "
                                                      "(409 while it or a judge run over it is running).")
    def delete(self, request, session_id: int):
        session_delete(session=session_get(user=request.user, pk=session_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SessionPromptsApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=PromptsAddSerializer, responses={201: PromptsAddedSerializer})
    def post(self, request, session_id: int):
        rows = session_prompts_add(session=session_get(user=request.user, pk=session_id, write=True), body=json_body(request))
        return Response({"added": len(rows), "comparison_ids": [r.pk for r in rows]}, status=status.HTTP_201_CREATED)


class SessionRunApi(APIView):
    @extend_schema(request=None, responses={202: SessionSerializer},
                   description="Queue a run of the prompts not yet compared, on a CPU worker: both models loaded "
                               "once, prompts in batches, progress and each finished comparison pushed on "
                               "ws/finetune/comparison/{id}/.")
    def post(self, request, session_id: int):
        session = session_run(session=session_get(user=request.user, pk=session_id, write=True))
        return Response(SessionSerializer(session).data, status=status.HTTP_202_ACCEPTED)


class SessionCancelApi(APIView):
    @extend_schema(request=None, responses={202: SessionSerializer},
                   description="Stop the run (comparisons finished so far are kept).")
    def post(self, request, session_id: int):
        session = session_cancel(session=session_get(user=request.user, pk=session_id, write=True))
        return Response(SessionSerializer(session).data, status=status.HTTP_202_ACCEPTED)


class SessionRateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(request=RateSerializer, responses={201: RatedSerializer},
                   description="Your rating of one comparison: preferred A, B or tie, 1-5 per criterion for each, "
                               "and a reason. Rating again replaces it. Viewers may rate when the team allows it.")
    def post(self, request, session_id: int):
        from evaluation_app.selectors import rating_as_shown, rating_progress

        session = session_get(user=request.user, pk=session_id)
        rating = comparison_rate(session=session, user=request.user, body=json_body(request))
        return Response({"comparison_id": rating.comparison_id,
                         "my_rating": rating_as_shown(rating, rating.comparison),
                         "revealed": session_revealed(session=session), "progress": rating_progress(session=session)},
                        status=status.HTTP_201_CREATED)


class SessionExportApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("format", str, enum=["json", "csv"])],
                   responses={(200, "application/json"): dict, (200, "text/csv"): str},
                   description="Every comparison with its responses and ratings (blind: A/B and your own ratings "
                               "until revealed).")
    def get(self, request, session_id: int):
        session = session_get(user=request.user, pk=session_id)
        fmt = request.query_params.get("format", "json")
        if fmt not in ("json", "csv"):
            raise NexusError(f"format: must be json or csv, got {fmt[:20]!r}", code="validation_error",
                             details={"format": fmt[:20]})
        content, content_type = session_export(session=session, user=request.user, fmt=fmt)
        response = HttpResponse(content, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="comparison-{session.pk}.{fmt}"'
        return response


# -- LLM judge --------------------------------------------------------------------------------------


class JudgeRunSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    session_id = serializers.IntegerField()
    label = serializers.CharField(read_only=True)
    judge_config = serializers.SerializerMethodField()

    class Meta:
        model = JudgeRun
        fields = ["id", "team", "session_id", "label", "judge_config", "evaluation_criteria", "scoring_rubric",
                  "num_evaluations", "temperature", "concurrency", "status", "progress", "stage", "error", "calls",
                  "tokens_in", "tokens_out", "worker", "created_at", "started_at", "completed_at", "updated_at"]

    def get_judge_config(self, run: JudgeRun) -> dict:
        return {"provider": run.provider, "model": run.model, "base_url": run.base_url,
                "deployment_id": run.deployment_id, "connection_id": run.connection_id, "key_last4": run.key_last4,
                "max_tokens": run.max_tokens}


class JudgeDetailSerializer(JudgeRunSerializer):
    revealed = serializers.BooleanField()
    evaluations = serializers.ListField(child=serializers.DictField(), allow_null=True,
                                        help_text="the design's JudgeEvaluation per comparison (null while a blind "
                                                  "session is not revealed)")
    summary = serializers.DictField(allow_null=True)

    class Meta(JudgeRunSerializer.Meta):
        fields = [*JudgeRunSerializer.Meta.fields, "revealed", "summary", "evaluations"]


class JudgeCreateSerializer(serializers.Serializer):
    session_id = serializers.IntegerField()
    judge_config = TeacherConfigSerializer(help_text="provider, model, api_key, base_url; a deployment; or a saved "
                                                     "connection (connection_id)")
    judge_model = serializers.CharField(required=False, help_text="the design's JudgeConfig instead of judge_config: "
                                                                  '"gpt-4", "claude-3-opus" or "deployed:<id>"')
    judge_api_key = serializers.CharField(required=False, write_only=True, help_text="with judge_model")
    evaluation_criteria = serializers.ListField(child=serializers.CharField(), required=False,
                                                help_text="default: " + ", ".join(CRITERIA))
    scoring_rubric = serializers.DictField(child=serializers.CharField(), required=False)
    num_evaluations = serializers.IntegerField(required=False, default=1, min_value=1, max_value=5,
                                               help_text="rounds per pair, each in both orders")
    temperature = serializers.FloatField(required=False, default=0.0, min_value=0, max_value=2)
    concurrency = serializers.IntegerField(required=False, default=4, min_value=1, max_value=16)


class JudgeConfigSerializer(serializers.Serializer):
    evaluation_criteria = serializers.ListField(child=serializers.CharField())
    criteria_descriptions = serializers.DictField()
    scoring_rubric = serializers.DictField()
    num_evaluations = serializers.IntegerField()
    temperature = serializers.FloatField()
    prompt_template = serializers.CharField()
    position_debiasing = serializers.CharField()


def _judge_detail(run: JudgeRun) -> dict:
    revealed = session_revealed(session=run.session)
    return {**JudgeRunSerializer(run).data, "revealed": revealed,
            "summary": judge_summary(run=run) if revealed else None,
            "evaluations": judge_evaluations(run=run) if revealed else None}


class JudgeListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=paginated(JudgeRunSerializer),
                   parameters=[*PAGE_PARAMETERS, OpenApiParameter("session_id", int)])
    def get(self, request):
        rows = judge_run_list(user=request.user, team=request_team_filter(request),
                              session_id=_optional_int(request, "session_id"))
        return paginate(request, rows, lambda page: JudgeRunSerializer(page, many=True).data)

    @extend_schema(request=JudgeCreateSerializer, responses={202: JudgeDetailSerializer},
                   description="Judge a session's comparisons with an LLM: every pair in both orders; a verdict "
                               "counts only when both orders agree.")
    def post(self, request):
        team = request_team(request, write=True)
        run = judge_create(team=team, user=request.user, body=json_body(request))
        return Response(_judge_detail(run), status=status.HTTP_202_ACCEPTED)


class JudgeDetailApi(APIView):
    @extend_schema(responses=JudgeDetailSerializer)
    def get(self, request, judge_id: int):
        return Response(_judge_detail(judge_run_get(user=request.user, pk=judge_id)))

    @extend_schema(responses={202: JudgeRunSerializer}, description="Cancel the run (verdicts so far are kept).")
    def delete(self, request, judge_id: int):
        run = judge_cancel(run=judge_run_get(user=request.user, pk=judge_id, write=True))
        return Response(JudgeRunSerializer(run).data, status=status.HTTP_202_ACCEPTED)


class JudgeConfigApi(APIView):
    @extend_schema(responses=JudgeConfigSerializer)
    def get(self, request):
        return Response({"evaluation_criteria": list(CRITERIA), "criteria_descriptions": CRITERIA_DESCRIPTIONS,
                         "scoring_rubric": DEFAULT_RUBRIC, "num_evaluations": 1, "temperature": 0.0,
                         "prompt_template": render_template(),
                         "position_debiasing": "every pair is judged twice, once with each response first; a verdict "
                                               "counts only when both orders agree, otherwise it is a tie"})


# -- speed tests ------------------------------------------------------------------------------------


class PerformanceSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    adapter_id = serializers.IntegerField()
    base_model = serializers.CharField(source="base_model.name")

    class Meta:
        model = PerformanceTest
        fields = ["id", "team", "name", "adapter_id", "base_model", "test_prompts", "output_lengths", "batch_sizes",
                  "num_iterations", "warmup_iterations", "status", "progress", "stage", "error", "worker",
                  "base_model_metrics", "finetuned_metrics", "comparison", "created_at", "started_at", "completed_at",
                  "updated_at"]


class PerformanceCreateSerializer(serializers.Serializer):
    adapter_id = serializers.IntegerField(help_text="its base model against base + this adapter (GGUF)")
    name = serializers.CharField(required=False)
    test_prompts = serializers.ListField(child=serializers.CharField(), required=False)
    output_lengths = serializers.ListField(child=serializers.IntegerField(), required=False, default=[64, 256])
    batch_sizes = serializers.ListField(child=serializers.IntegerField(), required=False, default=[1, 4],
                                        help_text="concurrent requests")
    num_iterations = serializers.IntegerField(required=False, default=10, min_value=1)
    warmup_iterations = serializers.IntegerField(required=False, default=2, min_value=0)
    team = serializers.CharField(required=False)


class PerformanceListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=paginated(PerformanceSerializer),
                   parameters=[*PAGE_PARAMETERS, OpenApiParameter("adapter_id", int)])
    def get(self, request):
        rows = performance_list(user=request.user, team=request_team_filter(request),
                                adapter_id=_optional_int(request, "adapter_id"))
        return paginate(request, rows, lambda page: PerformanceSerializer(page, many=True).data)

    @extend_schema(request=PerformanceCreateSerializer, responses={202: PerformanceSerializer},
                   description="The design's PerformanceTest on real llama.cpp servers: tokens/s, time to first "
                               "token, total time, the server's peak memory and prompt-cache reuse, per output "
                               "length and concurrency and overall (medians with spread, warm-up excluded).")
    def post(self, request):
        team = request_team(request, write=True)
        test = performance_create(team=team, user=request.user, body=json_body(request))
        return Response(PerformanceSerializer(test).data, status=status.HTTP_202_ACCEPTED)


class PerformanceDetailApi(APIView):
    @extend_schema(responses=PerformanceSerializer)
    def get(self, request, performance_id: int):
        return Response(PerformanceSerializer(performance_get(user=request.user, pk=performance_id)).data)

    @extend_schema(responses={202: PerformanceSerializer}, description="Cancel the speed test.")
    def delete(self, request, performance_id: int):
        test = performance_cancel(test=performance_get(user=request.user, pk=performance_id, write=True))
        return Response(PerformanceSerializer(test).data, status=status.HTTP_202_ACCEPTED)


# -- the adapter page's quick comparison ------------------------------------------------------------


class CompareSideSerializer(serializers.Serializer):
    text = serializers.CharField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    seconds = serializers.FloatField()
    tokens_per_s = serializers.FloatField()


class CompareSerializer(serializers.Serializer):
    prompt = serializers.CharField()
    base = CompareSideSerializer()
    adapter = CompareSideSerializer()


class AdapterCompareApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("prompt", str, required=True),
                               OpenApiParameter("max_tokens", int, description="1-512, default 64")],
                   responses=CompareSerializer,
                   description="The same prompt through the base model and base + this adapter (llama.cpp on a CPU worker, greedy; this request waits for it): "
                               "text, tokens, seconds and tokens/s side by side. 409 when the adapter has no GGUF; 504 when no worker "
                               "answered in time. Nothing is stored: a comparison session keeps its results.")
    def get(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id)
        max_tokens = int_query_param(request, "max_tokens", 64, lo=1, hi=512)
        return Response(adapter_compare(adapter=adapter, prompt=request.query_params.get("prompt", ""),
                                        max_tokens=max_tokens))
