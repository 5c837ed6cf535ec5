from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets_app.engine.formats import FORMAT_CHOICES
from datasets_app.models import Dataset
from datasets_app.selectors import dataset_get, dataset_list
from datasets_app.services import dataset_create
from nexus.api_utils import request_team, request_team_filter


class DatasetOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")

    class Meta:
        model = Dataset
        fields = ["id", "team", "name", "description", "format", "status", "num_examples", "num_invalid", "total_tokens",
                  "file_path", "original_filename", "file_size", "error_message", "created_at", "updated_at",
                  "validation_errors", "statistics"]


class DatasetListCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        description = serializers.CharField(required=False, allow_blank=True, default="")
        format = serializers.ChoiceField(choices=FORMAT_CHOICES, required=False, default="auto")
        team = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=DatasetOutputSerializer(many=True))
    def get(self, request):
        qs = dataset_list(user=request.user, team=request_team_filter(request))
        return Response({"results": DatasetOutputSerializer(qs, many=True).data})

    @extend_schema(request=InputSerializer, responses={201: DatasetOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        dataset = dataset_create(team=team, user=request.user, name=v["name"], file=v["file"],
                                 description=v["description"], format=v["format"])
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailApi(APIView):
    @extend_schema(responses=DatasetOutputSerializer)
    def get(self, request, dataset_id: int):
        return Response(DatasetOutputSerializer(dataset_get(user=request.user, pk=dataset_id)).data)
