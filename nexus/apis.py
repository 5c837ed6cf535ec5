from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.views import APIView

from nexus.catalog import base_models_visible
from nexus.models import BaseModel
from nexus.pagination import PAGE_PARAMETERS, paginate, paginated


class BaseModelListApi(APIView):
    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = BaseModel
            fields = ["id", "name", "architecture", "parameter_count", "context_length", "has_chat_template",
                      "trainable", "has_gguf", "source", "created_at"]

    @extend_schema(responses=paginated(OutputSerializer, "BaseModel"), parameters=PAGE_PARAMETERS)
    def get(self, request):
        return paginate(request, base_models_visible(request.user).order_by("name"),
                        lambda items: self.OutputSerializer(items, many=True).data)
