"""Benchmarks' REST API (design 10.6): jobs, suites, custom test sets, and the evaluation summary
of an adapter (10.9). Scores are percentages; every change comes with its 95% interval."""
from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.selectors import adapter_get
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
from evaluation_app.models import CustomBenchmark
from nexus.api_utils import json_body, request_team, request_team_filter
from nexus.pagination import PAGE_PARAMETERS, paginate
from nexus.parsers import StrictJSONParser


def _flag(request, name: str, default: bool) -> bool:  # noqa: ANN001
    value = request.query_params.get(name)
    if value is None:
        return default
    return value.lower() in ("1", "true", "yes")


class BenchmarkConfigSerializer(serializers.Serializer):
    benchmark_name = serializers.CharField(help_text="mmlu, hellaswag, arc, truthfulqa, winogrande, gsm8k, humaneval "
                                                     "or custom:<id> / a custom set's name")
    num_samples = serializers.IntegerField(required=False, allow_null=True, help_text="null = the full benchmark")
    num_few_shot = serializers.IntegerField(required=False, default=5)
    batch_size = serializers.IntegerField(required=False, default=8)
    max_tokens = serializers.IntegerField(required=False, default=256)
    temperature = serializers.FloatField(required=False, default=0.0)
    include_reasoning = serializers.BooleanField(required=False, default=False)
    samples_per_problem = serializers.IntegerField(required=False, default=1, help_text="HumanEval pass@k")


class BenchmarkJobCreateSerializer(serializers.Serializer):
    name = serializers.CharField(required=False)
    base_model = serializers.CharField(required=False, help_text="default: the adapter's base model")
    adapter_id = serializers.IntegerField(required=False, allow_null=True, help_text="null = the base model only")
    benchmarks = BenchmarkConfigSerializer(many=True)
    judge_config = serializers.DictField(required=False, help_text="checks custom cases' required_tone")
    team = serializers.CharField(required=False)


class BenchmarkJobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    base_model = serializers.CharField()
    adapter_id = serializers.IntegerField(allow_null=True)
    benchmarks = serializers.ListField(child=serializers.DictField())
    status = serializers.CharField()
    progress = serializers.FloatField()
    results = serializers.DictField(help_text="benchmark name -> BenchmarkResult")
    base_model_avg_score = serializers.FloatField(allow_null=True)
    finetuned_avg_score = serializers.FloatField(allow_null=True)
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class BenchmarkListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=BenchmarkJobSerializer(many=True),
                   parameters=[*PAGE_PARAMETERS, OpenApiParameter("adapter_id", int)])
    def get(self, request):
        from nexus.api_utils import int_query_param

        adapter_id = request.query_params.get("adapter_id")
        rows = benchmark_job_list(user=request.user, team=request_team_filter(request),
                                  adapter_id=int_query_param(request, "adapter_id", 0, hi=10**12) if adapter_id else None)
        return paginate(request, rows.prefetch_related("results"),
                        lambda page: [benchmark_job_view(job) for job in page])

    @extend_schema(request=BenchmarkJobCreateSerializer, responses={202: BenchmarkJobSerializer},
                   description="The design's BenchmarkJob: base and base + adapter on the same items with the same "
                               "settings through lm-evaluation-harness on a GPU-queue worker. 409 when a suite's "
                               "data is not installed (the answer says how to install it).")
    def post(self, request):
        team = request_team(request, write=True)
        job = benchmark_job_create(team=team, user=request.user, body=json_body(request))
        return Response(benchmark_job_view(job), status=status.HTTP_202_ACCEPTED)


class BenchmarkDetailApi(APIView):
    @extend_schema(responses=BenchmarkJobSerializer,
                   parameters=[OpenApiParameter("items", bool, description="per-item results (default true)")])
    def get(self, request, benchmark_id: int):
        job = benchmark_job_get(user=request.user, pk=benchmark_id)
        return Response(benchmark_job_view(job, items=_flag(request, "items", True)))

    @extend_schema(responses={202: BenchmarkJobSerializer}, description="Cancel the benchmark job; finished "
                                                                        "benchmarks are kept.")
    def delete(self, request, benchmark_id: int):
        job = benchmark_job_cancel(job=benchmark_job_get(user=request.user, pk=benchmark_id, write=True))
        return Response(benchmark_job_view(job), status=status.HTTP_202_ACCEPTED)


class BenchmarkSuitesApi(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT,
                   description="MMLU, HellaSwag, ARC, TruthfulQA, Winogrande, GSM8K, HumanEval and the team's custom "
                               "sets: metric, size, whether the data is installed (and how to install it), the "
                               "time a run is expected to take here (measured), and the backends.")
    def get(self, request):
        return Response({"suites": suites_view(user=request.user, team=request_team_filter(request)),
                         "backends": {"hf": "transformers through lm-eval: log-likelihood and generation tasks "
                                            "(self-checked before every run)",
                                      "llama.cpp": "not offered: llama-cpp-python's server echoes prompt "
                                                   "log-probabilities shifted by one token, so multiple-choice "
                                                   "scores would be wrong; the self-check refuses it"}})


class CustomBenchmarkSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    source_dataset_id = serializers.IntegerField(allow_null=True)
    benchmark_name = serializers.CharField(source="key")
    num_cases = serializers.SerializerMethodField()

    class Meta:
        model = CustomBenchmark
        fields = ["id", "team", "name", "benchmark_name", "description", "test_cases", "scoring", "num_cases",
                  "source_dataset_id", "sha256", "created_at", "updated_at"]

    def get_num_cases(self, row: CustomBenchmark) -> int:
        return len(row.test_cases)


class CustomBenchmarkCreateSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField(required=False)
    test_cases = serializers.ListField(child=serializers.DictField(), required=False,
                                       help_text="id, prompt, evaluation_type and that type's fields")
    scoring = serializers.DictField(required=False, help_text="type -> {weight, threshold (similarity)}")
    dataset_id = serializers.IntegerField(required=False, help_text="instead of test_cases: its test split")
    num_cases = serializers.IntegerField(required=False, default=500)
    threshold = serializers.FloatField(required=False, default=0.8)
    team = serializers.CharField(required=False)


class CustomBenchmarkListCreateApi(APIView):
    parser_classes = [StrictJSONParser]

    @extend_schema(responses=CustomBenchmarkSerializer(many=True), parameters=PAGE_PARAMETERS)
    def get(self, request):
        rows = custom_benchmark_list(user=request.user, team=request_team_filter(request))
        return paginate(request, rows, lambda page: CustomBenchmarkSerializer(page, many=True).data)

    @extend_schema(request=CustomBenchmarkCreateSerializer, responses={201: CustomBenchmarkSerializer},
                   description="The design's custom benchmark (10.3.3): test_cases of element_check, similarity, "
                               "constraint_check or multiple_choice with scoring weights; or {name, dataset_id} to "
                               "make a similarity set from a dataset's test split. A bad case is a 400 that names "
                               "its position, id and field.")
    def post(self, request):
        team = request_team(request, write=True)
        row = custom_benchmark_create(team=team, user=request.user, body=json_body(request))
        return Response(CustomBenchmarkSerializer(row).data, status=status.HTTP_201_CREATED)


class CustomBenchmarkDetailApi(APIView):
    @extend_schema(responses=CustomBenchmarkSerializer)
    def get(self, request, custom_id: int):
        return Response(CustomBenchmarkSerializer(custom_benchmark_get(user=request.user, pk=custom_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, custom_id: int):
        custom_benchmark_delete(custom=custom_benchmark_get(user=request.user, pk=custom_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class EvaluationSummaryApi(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT,
                   description="The design's EvaluationSummary (10.9) of an adapter: benchmarks with intervals, "
                               "human and judge preference, speed and memory, and a recommendation by the rule in "
                               "`rule` (deploy | needs_work | regression).")
    def get(self, request, adapter_id: int):
        return Response(evaluation_summary(adapter=adapter_get(user=request.user, pk=adapter_id)))
