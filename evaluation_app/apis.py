"""Evaluation's API: base vs adapter side by side (run on a CPU worker)."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.selectors import adapter_get
from evaluation_app.services import adapter_compare
from nexus.api_utils import int_query_param


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
                               "answered in time.")
    def get(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id)
        max_tokens = int_query_param(request, "max_tokens", 64, lo=1, hi=512)
        return Response(adapter_compare(adapter=adapter, prompt=request.query_params.get("prompt", ""),
                                        max_tokens=max_tokens))

