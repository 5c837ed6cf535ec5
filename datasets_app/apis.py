from __future__ import annotations

import json
from pathlib import Path

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from datasets_app.engine.formats import FORMATS
from datasets_app.engine.readers import FILE_TYPES
from datasets_app.engine.writers import CONTENT_TYPES
from datasets_app.models import Dataset
from datasets_app.selectors import (
    dataset_get,
    dataset_list_lean,
    dataset_preview,
    dataset_training_estimate,
    dataset_validation_errors,
)
from datasets_app.services import (
    dataset_contamination,
    dataset_convert_file,
    dataset_create,
    dataset_dedup_apply,
    dataset_delete,
    dataset_export,
    dataset_revalidate,
    dataset_split,
    dataset_update,
)
from nexus.catalog import base_model_lookup
from nexus.pagination import (
    PAGE_PARAMETERS,
    OffsetPageSerializer,
    ValuesList,
    paginated,
    with_links,
)
from nexus.parsers import StrictJSONParser
from nexus.api_utils import int_query_param, request_team, request_team_filter


@extend_schema_serializer(component_name="Dataset")  # section 5.3's name
class DatasetOutputSerializer(serializers.ModelSerializer):
    team = serializers.IntegerField(source="team_id")
    parent_id = serializers.IntegerField(allow_null=True)
    validated_with = serializers.CharField(source="validated_with.name", allow_null=True, default=None)

    class Meta:
        model = Dataset
        fields = ["id", "team", "name", "description", "format", "file_type", "status", "num_examples", "num_invalid",
                  "num_usable", "total_tokens", "file_path", "original_filename", "file_size", "error_message",
                  "detection", "validated_with", "excluded_indices", "dedup_actions", "parent_id", "split",
                  "origin", "created_at", "updated_at", "validation_errors", "statistics"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["validation_errors"] = data["validation_errors"][:100]  # the full list is paged at /validation-errors
        return data


@extend_schema_serializer(component_name="DatasetListItem")
class DatasetListItemSerializer(serializers.ModelSerializer):
    """A dataset in a list: its facts without the large JSON (problems, statistics, duplicates),
    which its own endpoint returns."""

    team = serializers.IntegerField(source="team_id")
    parent_id = serializers.IntegerField(allow_null=True)
    validated_with = serializers.CharField(source="validated_with.name", allow_null=True, default=None)
    num_usable = serializers.IntegerField(source="num_usable_now", help_text="valid records not excluded as duplicates")

    class Meta:
        model = Dataset
        fields = ["id", "team", "name", "description", "format", "file_type", "status", "num_examples", "num_invalid",
                  "num_usable", "total_tokens", "file_path", "original_filename", "file_size", "error_message",
                  "validated_with", "parent_id", "split", "created_at", "updated_at"]


# DatasetListItemSerializer's fields as columns, for the list's fast path (a test keeps the two equal)
DATASET_LIST_ITEM = {name: {"team": "team_id", "num_usable": "num_usable_now", "file_path": "original_file",
                            "validated_with": "validated_with__name"}.get(name, name)
                     for name in DatasetListItemSerializer.Meta.fields}
DATASET_LIST = ValuesList(dataset_list_lean, DATASET_LIST_ITEM)


class PreviewPageSerializer(OffsetPageSerializer):
    results = serializers.ListField(child=serializers.DictField(), help_text="normalized conversations: messages, "
                                    "source_index, line, excluded")


class ValidationErrorsPageSerializer(OffsetPageSerializer):
    listed = serializers.IntegerField(help_text="problems kept with their lines (the first 10,000)")
    by_category = serializers.DictField(child=serializers.IntegerField())
    results = serializers.ListField(child=serializers.DictField(), help_text="line, index, category, message")


class StatisticsSerializer(serializers.Serializer):
    num_usable = serializers.IntegerField()
    training_estimate = serializers.DictField()
    token_histogram = serializers.JSONField(required=False)


class DuplicatesSerializer(serializers.Serializer):
    exact = serializers.ListField(child=serializers.DictField(), required=False)
    near = serializers.ListField(child=serializers.DictField(), required=False)
    excluded_indices = serializers.ListField(child=serializers.IntegerField())
    actions = serializers.ListField(child=serializers.DictField())


class ContaminationSerializer(serializers.Serializer):
    contaminated_records = serializers.IntegerField()
    fraction = serializers.FloatField()
    exact = serializers.ListField(child=serializers.DictField())
    near = serializers.ListField(child=serializers.DictField())
    same_prompt = serializers.ListField(child=serializers.DictField())


class SplitResultSerializer(serializers.Serializer):
    results = DatasetOutputSerializer(many=True)


class DatasetListCreateApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
        description = serializers.CharField(required=False, allow_blank=True, default="")
        format = serializers.ChoiceField(choices=Dataset.Format.choices, required=False, default="auto")
        team = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=paginated(DatasetListItemSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        return DATASET_LIST.page(request, team=request_team_filter(request))

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
    class UpdateSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False)
        description = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=DatasetOutputSerializer)
    def get(self, request, dataset_id: int):
        return Response(DatasetOutputSerializer(dataset_get(user=request.user, pk=dataset_id)).data)

    @extend_schema(request=UpdateSerializer, responses=DatasetOutputSerializer)
    def patch(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id, write=True)
        data = self.UpdateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(DatasetOutputSerializer(dataset_update(dataset=dataset, **data.validated_data)).data)

    @extend_schema(responses={204: None}, description="Delete the dataset and its files (original and normalized).")
    def delete(self, request, dataset_id: int):
        dataset_delete(dataset=dataset_get(user=request.user, pk=dataset_id, write=True))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DatasetPreviewApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int)],
                   responses=PreviewPageSerializer)
    def get(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        return Response(with_links(request, dataset_preview(
            dataset=dataset, offset=int_query_param(request, "offset", 0, hi=10**9),
            limit=int_query_param(request, "limit", 20, lo=1, hi=200))))


class DatasetStatisticsApi(APIView):
    @extend_schema(responses=StatisticsSerializer)
    def get(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        return Response({**dataset.statistics, "num_usable": dataset.num_usable,
                         "training_estimate": dataset_training_estimate(dataset=dataset)})


class DatasetValidationErrorsApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int),
                               OpenApiParameter("category", str)], responses=ValidationErrorsPageSerializer)
    def get(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        body = dataset_validation_errors(dataset=dataset, offset=int_query_param(request, "offset", 0, hi=10**9),
                                         limit=int_query_param(request, "limit", 50, lo=1, hi=500),
                                         category=request.query_params.get("category"))
        return Response(with_links(request, body, listed=body["listed"]))


class DatasetValidateApi(APIView):
    parser_classes = [StrictJSONParser, FormParser]

    class InputSerializer(serializers.Serializer):
        base_model = serializers.CharField(required=False, help_text="catalog name or id whose tokenizer counts tokens")
        max_tokens = serializers.IntegerField(required=False, min_value=1)
        min_tokens = serializers.IntegerField(required=False, min_value=0)
        threshold = serializers.FloatField(required=False, min_value=0.1, max_value=1.0, help_text="near-duplicate Jaccard")
        shingle_size = serializers.IntegerField(required=False, min_value=1, max_value=10)
        languages = serializers.ListField(child=serializers.RegexField(r"^[a-z]{2,3}$"), required=False,
                                          help_text="ISO 639-1 codes; records confidently in another language are listed")

    @extend_schema(request=InputSerializer, responses={202: DatasetOutputSerializer})
    def post(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        model = base_model_lookup(user=request.user, value=v["base_model"]) if v.get("base_model") else None
        dedup = {k: v[k] for k in ("threshold", "shingle_size") if k in v}
        dataset = dataset_revalidate(dataset=dataset, base_model=model, max_tokens=v.get("max_tokens"),
                                     min_tokens=v.get("min_tokens"), dedup=dedup, languages=v.get("languages"))
        return Response(DatasetOutputSerializer(dataset).data, status=status.HTTP_202_ACCEPTED)


class DatasetDuplicatesApi(APIView):
    parser_classes = [StrictJSONParser, FormParser]

    class InputSerializer(serializers.Serializer):
        action = serializers.ChoiceField(choices=["remove", "restore"])
        kinds = serializers.ListField(child=serializers.CharField(), required=False)

    @extend_schema(responses=DuplicatesSerializer)
    def get(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        return Response({**dataset.duplicates, "excluded_indices": dataset.excluded_indices,
                         "actions": dataset.dedup_actions})

    @extend_schema(request=InputSerializer, responses=DatasetOutputSerializer)
    def post(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = dataset_dedup_apply(dataset=dataset, user=request.user, **data.validated_data)
        return Response(DatasetOutputSerializer(dataset).data)


class DatasetSplitApi(APIView):
    parser_classes = [StrictJSONParser, FormParser]

    class InputSerializer(serializers.Serializer):
        train = serializers.FloatField(required=False, default=0.8)
        val = serializers.FloatField(required=False, default=0.1)
        test = serializers.FloatField(required=False, default=0.1)
        seed = serializers.IntegerField(required=False, default=42)
        against = serializers.IntegerField(required=False, min_value=1,
                                           help_text="id of a test set to check every split against")

    @extend_schema(request=InputSerializer, responses={201: SplitResultSerializer})
    def post(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        against_id = v.pop("against", None)
        against = dataset_get(user=request.user, pk=against_id) if against_id is not None else None
        splits = dataset_split(dataset=dataset, user=request.user, against=against, **v)
        return Response({"results": DatasetOutputSerializer(splits, many=True).data}, status=status.HTTP_201_CREATED)


class DatasetContaminationApi(APIView):
    parser_classes = [StrictJSONParser, FormParser]

    class InputSerializer(serializers.Serializer):
        against = serializers.IntegerField(help_text="id of a dataset (e.g. your test set) to check against")
        threshold = serializers.FloatField(required=False, min_value=0.1, max_value=1.0)

    @extend_schema(request=InputSerializer, responses=ContaminationSerializer)
    def post(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        against = dataset_get(user=request.user, pk=data.validated_data["against"])
        return Response(dataset_contamination(dataset=dataset, against=against, threshold=data.validated_data.get("threshold")))


def _file_response(data: bytes, filename: str, file_type: str) -> HttpResponse:
    response = HttpResponse(data, content_type=CONTENT_TYPES[file_type])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class DatasetDownloadApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("format", str, enum=list(FORMATS) + ["original"]),
                               OpenApiParameter("file_type", str, enum=list(FILE_TYPES))],
                   responses={(200, "application/octet-stream"): bytes})
    def get(self, request, dataset_id: int):
        dataset = dataset_get(user=request.user, pk=dataset_id)
        fmt = request.query_params.get("format") or dataset.format
        if fmt == "original":
            with dataset.original_file.open("rb") as fh:
                data = fh.read()
            response = HttpResponse(data, content_type="application/octet-stream")
            response["Content-Disposition"] = f'attachment; filename="{Path(dataset.original_filename).name}"'
            return response
        file_type = request.query_params.get("file_type", "jsonl")
        data, notes = dataset_export(dataset=dataset, fmt=fmt, file_type=file_type)
        response = _file_response(data, f"dataset-{dataset.pk}-{fmt}.{file_type}", file_type)
        if notes:
            response["X-Nexus-Lossy"] = json.dumps(notes)
        return response


class DatasetConvertApi(APIView):
    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        from_format = serializers.ChoiceField(choices=Dataset.Format.choices, required=False, default="auto")
        to_format = serializers.ChoiceField(choices=FORMATS)
        file_type = serializers.ChoiceField(choices=FILE_TYPES, required=False, default="jsonl")

    @extend_schema(request=InputSerializer, responses={(200, "application/octet-stream"): bytes},
                   description="Convert a file between formats without storing it. Invalid records are left out and "
                               "reported in the X-Nexus-Report header.")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        out, report = dataset_convert_file(file=v["file"], from_format=v["from_format"], to_format=v["to_format"],
                                           file_type=v["file_type"])
        response = _file_response(out, f"{Path(v['file'].name).stem}-{v['to_format']}.{v['file_type']}", v["file_type"])
        report["problems"] = [{k: p[k] for k in ("line", "index", "category", "message")} for p in report["problems"][:20]]
        response["X-Nexus-Report"] = json.dumps(report, ensure_ascii=True)
        return response
