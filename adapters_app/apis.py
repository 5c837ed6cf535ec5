from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from adapters_app.models import LoRAAdapter
from adapters_app.selectors import adapter_get, adapter_list
from nexus.api_utils import request_team_filter


class AdapterOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    job_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = LoRAAdapter
        fields = ["id", "team", "name", "version", "base_model", "job_id", "path", "size_bytes", "lora_config",
                  "final_loss", "created_at"]


class AdapterListApi(APIView):
    @extend_schema(responses=AdapterOutputSerializer(many=True))
    def get(self, request):
        qs = adapter_list(user=request.user, team=request_team_filter(request))
        return Response({"results": AdapterOutputSerializer(qs, many=True).data})


class AdapterDetailApi(APIView):
    @extend_schema(responses=AdapterOutputSerializer)
    def get(self, request, adapter_id: int):
        return Response(AdapterOutputSerializer(adapter_get(user=request.user, pk=adapter_id)).data)
