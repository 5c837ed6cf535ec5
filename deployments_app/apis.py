"""REST API for deployments and each deployment's OpenAI-compatible proxy."""
from __future__ import annotations

from typing import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.selectors import adapter_get, export_get
from deployments_app.models import Deployment, DeploymentArm, DeploymentRequest
from deployments_app.proxy import ProxyResult, deployment_call, deployment_public_path
from deployments_app.selectors import (
    deployment_arm_stats,
    deployment_get,
    deployment_health,
    deployment_list,
    deployment_log_tail,
    deployment_recent_requests,
)
from deployments_app.services import (
    ArmInput,
    deployment_check_use,
    deployment_create,
    deployment_delete,
    deployment_start,
    deployment_stop,
)
from nexus.api_utils import int_query_param, request_team, request_team_filter
from nexus.catalog import base_model_lookup
from nexus.errors import NexusError
from nexus.pagination import PAGE_PARAMETERS, paginate, paginated


class BearerTokenAuthentication(TokenAuthentication):
    """DRF tokens sent the way OpenAI clients send API keys: `Authorization: Bearer <token>`."""

    keyword = "Bearer"


class ArmOutputSerializer(serializers.ModelSerializer):
    adapter_id = serializers.IntegerField(allow_null=True)
    export_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = DeploymentArm
        fields = ["label", "serves", "adapter_id", "export_id", "weight", "host", "port", "pid", "healthy_at"]


class DeploymentOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    arms = ArmOutputSerializer(many=True)
    endpoint = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = ["id", "team", "name", "base_model", "status", "settings", "error", "arms", "endpoint", "created_at",
                  "started_at", "stopped_at"]

    def get_endpoint(self, deployment: Deployment) -> str:
        return deployment_public_path(deployment=deployment)


class RequestOutputSerializer(serializers.ModelSerializer):
    arm = serializers.CharField(source="arm.label")

    class Meta:
        model = DeploymentRequest
        fields = ["id", "arm", "endpoint", "status_code", "prompt_tokens", "completion_tokens", "latency_ms",
                  "created_at"]


class _ArmInputSerializer(serializers.Serializer):
    adapter_id = serializers.IntegerField(required=False, allow_null=True, help_text="omit to serve the base model")
    export_id = serializers.IntegerField(required=False, allow_null=True, help_text="a merged-model GGUF export")
    weight = serializers.IntegerField(min_value=0, max_value=100, default=100, help_text="percent of requests")


def _arm_input(request, data: dict) -> ArmInput:
    adapter = adapter_get(user=request.user, pk=data["adapter_id"]) if data.get("adapter_id") else None
    export = export_get(user=request.user, pk=data["export_id"]) if data.get("export_id") else None
    return ArmInput(weight=data["weight"], adapter=adapter, export=export)


def _detail(deployment: Deployment) -> dict:
    body = DeploymentOutputSerializer(deployment).data
    stats = {s["arm"].label: s for s in deployment_arm_stats(deployment=deployment)}
    for arm in body["arms"]:
        s = stats.get(arm["label"], {})
        arm["stats"] = {k: s.get(k) for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "tokens_per_s")}
    return body


class DeploymentListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        base_model = serializers.CharField(help_text="catalog name or id")
        arms = _ArmInputSerializer(many=True, required=False,
                                   help_text="one arm, or two for an A/B split; default: the base model alone")
        settings = serializers.JSONField(required=False, default=dict, help_text="n_ctx, n_threads, n_gpu_layers")
        team = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=paginated(DeploymentOutputSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        qs = deployment_list(user=request.user, team=request_team_filter(request))
        return paginate(request, qs, lambda items: DeploymentOutputSerializer(items, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: DeploymentOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        arms = [_arm_input(request, a) for a in v.get("arms") or [{"weight": 100}]]
        deployment = deployment_create(team=team, user=request.user, name=v["name"], arms=arms, settings=v["settings"],
                                       base_model=base_model_lookup(user=request.user, value=v["base_model"]))
        return Response(_detail(deployment), status=status.HTTP_201_CREATED)


class AdapterDeployApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        export_id = serializers.IntegerField(required=False, allow_null=True,
                                             help_text="serve this merged-model GGUF export instead of base + adapter")
        split_with = serializers.CharField(required=False, allow_blank=True, default="",
                                           help_text="A/B: 'base' or another adapter's id as arm B")
        weight = serializers.IntegerField(min_value=0, max_value=100, required=False,
                                          help_text="percent of requests to this adapter (default 100, or 50 in A/B)")
        settings = serializers.JSONField(required=False, default=dict, help_text="n_ctx, n_threads, n_gpu_layers")

    @extend_schema(request=InputSerializer, responses={201: DeploymentOutputSerializer},
                   description="Start a llama.cpp server for base + this adapter (exported to GGUF first when needed), "
                               "optionally split with the base model or another adapter.")
    def post(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        split = v["split_with"].strip()
        weight = v.get("weight", 50 if split else 100)
        export = export_get(user=request.user, pk=v["export_id"]) if v.get("export_id") else None
        arms = [ArmInput(weight=weight, adapter=None if export else adapter, export=export)]
        if split:
            other = None if split == "base" else adapter_get(user=request.user, pk=_int(split, "split_with"))
            arms.append(ArmInput(weight=100 - weight, adapter=other))
        deployment = deployment_create(team=adapter.team, user=request.user, name=v["name"] or str(adapter),
                                       base_model=adapter.base_model, arms=arms, settings=v["settings"])
        return Response(_detail(deployment), status=status.HTTP_201_CREATED)


def _int(value: str, field: str) -> int:
    if not value.isdecimal():
        raise NexusError(f"{field}: 'base' or an adapter id, got {value!r}", code="validation_error",
                         details={field: value})
    return int(value)


class DeploymentDetailApi(APIView):
    @extend_schema(responses=DeploymentOutputSerializer)
    def get(self, request, deployment_id: int):
        deployment = deployment_get(user=request.user, pk=deployment_id)
        return Response({**_detail(deployment), "recent_requests": RequestOutputSerializer(
            deployment_recent_requests(deployment=deployment), many=True).data})

    @extend_schema(responses={204: None}, description="Delete a stopped or failed deployment (409 while live).")
    def delete(self, request, deployment_id: int):
        deployment_delete(deployment=deployment_get(user=request.user, pk=deployment_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeploymentStartApi(APIView):
    @extend_schema(request=None, responses={202: DeploymentOutputSerializer})
    def post(self, request, deployment_id: int):
        deployment = deployment_start(deployment=deployment_get(user=request.user, pk=deployment_id, write=True))
        return Response(_detail(deployment), status=status.HTTP_202_ACCEPTED)


class DeploymentStopApi(APIView):
    @extend_schema(request=None, responses={200: DeploymentOutputSerializer, 202: DeploymentOutputSerializer},
                   description="202 while the worker on its host stops the servers (`stopping`); 200 when it is "
                               "already stopped or failed. Follow it on /events or the websocket.")
    def post(self, request, deployment_id: int):
        deployment = deployment_stop(deployment=deployment_get(user=request.user, pk=deployment_id, write=True))
        return Response(_detail(deployment), status=202 if deployment.status == "stopping" else 200)


class DeploymentStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    error = serializers.CharField()
    arms = serializers.ListField(child=serializers.DictField(), help_text="per arm: label, healthy, detail")


class DeploymentLogSerializer(serializers.Serializer):
    arm = serializers.CharField()
    log = serializers.CharField()


class DeploymentStatusApi(APIView):
    @extend_schema(responses=DeploymentStatusSerializer,
                   description="Status and a live health check of each arm's server (GET /v1/models).")
    def get(self, request, deployment_id: int):
        deployment = deployment_get(user=request.user, pk=deployment_id)
        health = deployment_health(deployment=deployment) if deployment.is_live else []
        return Response({"id": deployment.pk, "status": deployment.status, "error": deployment.error, "arms": health})


class DeploymentLogsApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("arm", str, description="A or B (default A)"),
                               OpenApiParameter("lines", int, description="last lines (default 200)")],
                   responses=DeploymentLogSerializer)
    def get(self, request, deployment_id: int):
        deployment = deployment_get(user=request.user, pk=deployment_id)
        label = request.query_params.get("arm", "A")
        arm = next((a for a in deployment.arms.all() if a.label == label), None)
        if arm is None:
            raise NexusError(f"arm: no arm '{label}' in this deployment", code="validation_error", details={"arm": label})
        lines = int_query_param(request, "lines", 200, lo=1, hi=5000)
        return Response({"arm": arm.label, "log": deployment_log_tail(arm=arm, lines=lines)})


class DeploymentOpenAIApi(APIView):
    """/v1/chat/completions, /v1/completions and /v1/models of a deployment, proxied to an arm by weight."""

    authentication_classes = [SessionAuthentication, TokenAuthentication, BearerTokenAuthentication]

    @extend_schema(exclude=True)
    def get(self, request, deployment_id: int, endpoint: str):
        return self._proxy(request, deployment_id, endpoint, "GET")

    @extend_schema(exclude=True)
    def post(self, request, deployment_id: int, endpoint: str):
        return self._proxy(request, deployment_id, endpoint, "POST")

    def _proxy(self, request, deployment_id: int, endpoint: str, method: str):
        deployment = deployment_get(user=request.user, pk=deployment_id)
        if endpoint.rstrip("/") != "models":  # listing the model spends nothing
            deployment_check_use(user=request.user, deployment=deployment)
        payload = request.data if method == "POST" else None
        if method == "POST" and not isinstance(payload, dict):
            raise NexusError("The body must be a JSON object", code="validation_error")
        stream = bool(payload and payload.get("stream"))
        result = deployment_call(deployment=deployment, endpoint=endpoint, method=method, payload=payload,
                                 user=request.user, stream=stream)
        if result.chunks is None:
            response = HttpResponse(result.body, status=result.status_code, content_type=result.content_type)
        else:
            chunks = _async_chunks(result) if isinstance(request._request, ASGIRequest) else _sync_chunks(result)
            response = StreamingHttpResponse(chunks, content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
        response["X-Nexus-Deployment"] = str(deployment.pk)
        response["X-Nexus-Arm"] = result.arm.label
        return response


def _sync_chunks(result: ProxyResult) -> Iterator[bytes]:
    try:
        yield from result.chunks
    finally:
        result.finish()


async def _async_chunks(result: ProxyResult) -> AsyncIterator[bytes]:
    # Each read waits on the arm's server: do it off the thread that runs Django's sync views, so
    # one stream does not hold up every other request; record it there when it ends.
    try:
        while (chunk := await sync_to_async(next, thread_sensitive=False)(result.chunks, None)) is not None:
            yield chunk
    finally:
        await sync_to_async(result.finish)()
