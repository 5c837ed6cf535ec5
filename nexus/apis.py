from __future__ import annotations

from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from nexus.catalog import base_models_visible
from nexus.models import BaseModel


class BaseModelListApi(APIView):
    class OutputSerializer(serializers.ModelSerializer):
        class Meta:
            model = BaseModel
            fields = ["id", "name", "architecture", "parameter_count", "context_length", "has_chat_template",
                      "trainable", "has_gguf", "source", "created_at"]

    def get(self, request):
        return Response({"results": self.OutputSerializer(base_models_visible(request.user), many=True).data})
