from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.engine.gguf import QUANTIZATIONS
from adapters_app.exports import export_create
from adapters_app.models import AdapterExport, LoRAAdapter
from adapters_app.selectors import adapter_get, adapter_list, export_get
from adapters_app.downloads import adapter_download_response, export_download_response
from adapters_app.services import adapter_delete
from nexus.api_utils import request_team_filter
from nexus.errors import NexusError
from nexus.pagination import PAGE_PARAMETERS, paginate, paginated
from training_app.schema import LoRAConfigField


@extend_schema_serializer(component_name="AdapterExport")
class ExportOutputSerializer(serializers.ModelSerializer):
    adapter_id = serializers.IntegerField()
    filename = serializers.CharField()
    gguf_path = serializers.SerializerMethodField(help_text="storage name of the GGUF file once the export is "
                                                  "completed (verified in llama.cpp); null before, and for a merge")
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = AdapterExport
        fields = ["id", "adapter_id", "kind", "quantization", "status", "progress", "stage", "filename", "gguf_path",
                  "size_bytes", "sha256", "verified", "verification", "error", "download_url", "created_at",
                  "started_at", "finished_at"]

    def get_gguf_path(self, export: AdapterExport) -> str | None:
        if export.status != AdapterExport.Status.COMPLETED or export.kind == AdapterExport.Kind.MERGE:
            return None
        return export.path

    def get_download_url(self, export: AdapterExport) -> str | None:
        if export.status != AdapterExport.Status.COMPLETED:
            return None
        return f"/api/v1/finetune/exports/{export.pk}/download"


@extend_schema_serializer(component_name="LoRAAdapter")
class AdapterOutputSerializer(serializers.ModelSerializer):
    """Section 5.3's LoRAAdapter, with what this project adds."""

    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    training_job_id = serializers.IntegerField(source="job_id", allow_null=True)
    job_id = serializers.IntegerField(allow_null=True)
    file_path = serializers.CharField(source="path", help_text="storage name of the PEFT adapter folder")
    file_size = serializers.IntegerField(source="size_bytes", help_text="bytes of the adapter folder")
    lora_config = LoRAConfigField()
    dataset_id = serializers.IntegerField(allow_null=True)
    merged_model = serializers.CharField(source="merged_model.name", allow_null=True, default=None)
    lineage = serializers.SerializerMethodField()
    exports = ExportOutputSerializer(many=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = LoRAAdapter
        fields = ["id", "team", "name", "description", "version", "base_model", "training_job_id", "job_id",
                  "dataset_id", "source", "checkpoint_step", "lineage", "file_path", "file_size", "size_bytes", "sha256",
                  "lora_config", "training_config", "metrics", "final_loss", "is_merged", "merged_model", "gguf_path",
                  "exports", "download_url", "created_at"]

    def get_lineage(self, adapter: LoRAAdapter) -> dict:
        return {"job": adapter.job_id, "job_name": adapter.job.name if adapter.job_id else None,
                "dataset": adapter.dataset_id, "dataset_name": adapter.dataset.name if adapter.dataset_id else None,
                "checkpoint_step": adapter.checkpoint_step}

    def get_download_url(self, adapter: LoRAAdapter) -> str:
        return f"/api/v1/finetune/adapters/{adapter.pk}/download"


class AdapterListApi(APIView):
    @extend_schema(responses=paginated(AdapterOutputSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        qs = adapter_list(user=request.user, team=request_team_filter(request)).select_related(
            "dataset", "merged_model").prefetch_related("exports")
        return paginate(request, qs, lambda items: AdapterOutputSerializer(items, many=True).data)


class AdapterDetailApi(APIView):
    @extend_schema(responses=AdapterOutputSerializer)
    def get(self, request, adapter_id: int):
        return Response(AdapterOutputSerializer(adapter_get(user=request.user, pk=adapter_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, adapter_id: int):
        adapter_delete(adapter=adapter_get(user=request.user, pk=adapter_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AdapterDownloadApi(APIView):
    @extend_schema(responses={(200, "application/zip"): bytes})
    def get(self, request, adapter_id: int):
        return adapter_download_response(adapter=adapter_get(user=request.user, pk=adapter_id))


class AdapterMergeApi(APIView):
    @extend_schema(request=None, responses={202: ExportOutputSerializer})
    def post(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id, write=True)
        export = export_create(adapter=adapter, user=request.user, kind=AdapterExport.Kind.MERGE)
        return Response(ExportOutputSerializer(export).data, status=status.HTTP_202_ACCEPTED)


class AdapterExportApi(APIView):
    class InputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=[AdapterExport.Kind.MODEL_GGUF, AdapterExport.Kind.ADAPTER_GGUF],
                                       required=False, help_text="model_gguf (the default): base + adapter merged into "
                                       "one GGUF at `quantization`; adapter_gguf: the LoRA adapter alone, for "
                                       "llama.cpp's --lora over the base GGUF")
        quantization = serializers.ChoiceField(choices=list(QUANTIZATIONS), required=False,
                                               help_text="of a model_gguf export (default q4_k_m); "
                                               "`{\"quantization\": \"q4_k_m\"}` alone is a merged q4_k_m GGUF")

    @extend_schema(request=InputSerializer, responses={202: ExportOutputSerializer})
    def post(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        kind = data.validated_data.get("kind", AdapterExport.Kind.MODEL_GGUF)
        quantization = data.validated_data.get("quantization", "")
        if kind == AdapterExport.Kind.ADAPTER_GGUF and quantization:
            raise NexusError("quantization: an adapter GGUF is written unquantized (f32, it is small); quantization "
                             "applies to kind model_gguf", code="validation_error",
                             details={"quantization": "not for kind adapter_gguf"})
        export = export_create(adapter=adapter, user=request.user, kind=kind, quantization=quantization)
        return Response(ExportOutputSerializer(export).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses=paginated(ExportOutputSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request, adapter_id: int):
        adapter = adapter_get(user=request.user, pk=adapter_id)
        return paginate(request, adapter.exports.all(), lambda items: ExportOutputSerializer(items, many=True).data)


class ExportDetailApi(APIView):
    @extend_schema(responses=ExportOutputSerializer)
    def get(self, request, export_id: int):
        return Response(ExportOutputSerializer(export_get(user=request.user, pk=export_id)).data)


class ExportDownloadApi(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request, export_id: int):
        return export_download_response(export=export_get(user=request.user, pk=export_id))
