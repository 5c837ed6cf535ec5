from __future__ import annotations


from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from nexus.errors import NexusError
from nexus.api_utils import int_query_param, request_team, request_team_filter
from nexus.pagination import (
    PAGE_PARAMETERS,
    OffsetPageSerializer,
    ValuesList,
    paginate,
    paginated,
    with_links,
)
from nexus.schema import EventSerializer
from adapters_app.apis import AdapterOutputSerializer
from training_app.models import FineTuningJob
from training_app.schema import LoRAConfigField, QLoRAConfigField, TrainingConfigField
from training_app.selectors import (
    preset_list,
    training_job_checkpoints,
    training_job_get,
    training_job_list,
    training_job_logs,
    training_job_metrics,
)
from training_app.services import (
    preset_create,
    preset_resolve,
    training_estimate,
    training_job_cancel,
    training_job_create,
    training_job_checkpoint_to_adapter,
    training_job_pause,
    training_job_request_checkpoint,
    training_job_resume,
)


@extend_schema_serializer(component_name="FineTuningJob")
class JobOutputSerializer(serializers.ModelSerializer):
    """Section 5.3's FineTuningJob, with what this project adds."""

    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    dataset_id = serializers.IntegerField()
    eval_dataset_id = serializers.IntegerField(allow_null=True)
    lora_config = LoRAConfigField()
    training_config = TrainingConfigField()
    qlora_config = QLoRAConfigField()
    adapter_id = serializers.SerializerMethodField()
    adapter_path = serializers.SerializerMethodField(help_text="storage name of the finished adapter's PEFT folder")
    completed_at = serializers.DateTimeField(source="finished_at", allow_null=True,
                                             help_text="when the job ended (completed, failed or cancelled)")
    warnings = serializers.ListField(child=serializers.CharField(), help_text="settings the job could not honour as "
                                     "asked, and what it used instead")

    class Meta:
        model = FineTuningJob
        fields = ["id", "team", "name", "description", "base_model", "dataset_id", "lora_config", "training_config",
                  "qlora_config", "status", "progress", "current_step", "total_steps", "current_epoch", "current_loss",
                  "best_loss", "current_eval_loss", "best_eval_loss", "best_checkpoint_step", "tokens_per_second", "metrics",
                  "adapter_id", "adapter_path", "warnings", "error", "cancel_requested", "pause_requested",
                  "checkpoint_requested", "eval_dataset_id", "created_at", "updated_at", "started_at", "completed_at",
                  "finished_at"]

    def get_adapter_id(self, job: FineTuningJob) -> int | None:
        if hasattr(job, "final_adapter_id"):  # annotated by the list selector: no query per job
            return job.final_adapter_id
        adapter = job.adapter
        return adapter.pk if adapter else None

    def get_adapter_path(self, job: FineTuningJob) -> str | None:
        if hasattr(job, "final_adapter_path"):
            return job.final_adapter_path
        adapter = job.adapter
        return adapter.path if adapter else None


@extend_schema_serializer(component_name="FineTuningJobListItem")
class JobListItemSerializer(serializers.ModelSerializer):
    """A job in a list: its state and results without its configs and metrics (the detail has them)."""

    team = serializers.IntegerField(source="team_id")
    base_model = serializers.CharField(source="base_model.name")
    dataset_id = serializers.IntegerField()
    adapter_id = serializers.IntegerField(source="final_adapter_id", allow_null=True)
    adapter_path = serializers.CharField(source="final_adapter_path", allow_null=True)
    completed_at = serializers.DateTimeField(source="finished_at", allow_null=True)
    warnings = serializers.ListField(child=serializers.CharField())

    class Meta:
        model = FineTuningJob
        fields = ["id", "team", "name", "description", "base_model", "dataset_id", "status", "progress",
                  "current_step", "total_steps", "current_epoch", "current_loss", "best_loss", "best_eval_loss",
                  "tokens_per_second", "adapter_id", "adapter_path", "warnings", "error", "created_at", "updated_at",
                  "started_at", "completed_at"]


# JobListItemSerializer's fields as columns, for the list's fast path (a test keeps the two equal)
JOB_LIST_ITEM = {name: {"team": "team_id", "base_model": "base_model__name", "adapter_id": "final_adapter_id",
                        "adapter_path": "final_adapter_path", "completed_at": "finished_at"}.get(name, name)
                 for name in JobListItemSerializer.Meta.fields}
JOB_LIST = ValuesList(training_job_list, JOB_LIST_ITEM)


@extend_schema_serializer(component_name="Preset")
class PresetOutputSerializer(serializers.Serializer):
    """A built-in preset (appendix A) or a team's own; it sets only the fields it names."""

    id = serializers.CharField(help_text="quick-start, balanced, high-quality, or a team preset's number")
    name = serializers.CharField()
    description = serializers.CharField()
    lora_config = LoRAConfigField()
    training_config = TrainingConfigField()
    qlora_config = QLoRAConfigField()
    lora = LoRAConfigField(help_text="appendix A's name for lora_config")
    training = TrainingConfigField(help_text="appendix A's name for training_config")
    builtin = serializers.BooleanField()
    team = serializers.IntegerField(allow_null=True)


class CheckpointSerializer(serializers.Serializer):
    step = serializers.IntegerField()
    size_bytes = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    has_optimizer_state = serializers.BooleanField()
    is_best = serializers.BooleanField(help_text="lowest validation loss so far")


class LogPageSerializer(OffsetPageSerializer):
    results = EventSerializer(many=True)


class MetricsSerializer(serializers.Serializer):
    status = serializers.CharField()
    current_step = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    eta_seconds = serializers.FloatField(allow_null=True)
    current_loss = serializers.FloatField(allow_null=True)
    current_eval_loss = serializers.FloatField(allow_null=True)
    best_eval_loss = serializers.FloatField(allow_null=True)
    best_checkpoint_step = serializers.IntegerField(allow_null=True)
    peak_memory_bytes = serializers.IntegerField(allow_null=True)
    results = serializers.ListField(child=serializers.DictField(), help_text="per-step loss, lr, grad norm, tokens/s, "
                                    "memory")
    eval = serializers.ListField(child=serializers.DictField(), help_text="validation loss per evaluation")


class EstimateSerializer(serializers.Serializer):
    base_model = serializers.CharField()
    config = serializers.DictField(help_text="lora_config, training_config and qlora_config as they would train")
    warnings = serializers.ListField(child=serializers.CharField())
    memory = serializers.DictField(help_text="total_bytes, total_gib, breakdown_bytes, lora_parameters, ...")
    time = serializers.DictField(help_text="available, seconds, steps, tokens_per_second, or the reason there is none")


class JobListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        base_model = serializers.CharField(help_text="Catalog name or id")
        dataset_id = serializers.IntegerField()
        eval_dataset_id = serializers.IntegerField(required=False, allow_null=True,
                                                   help_text="validation data (e.g. the val split); or training_config.validation_split")
        lora_config = LoRAConfigField(required=False, default=dict)
        training_config = TrainingConfigField(required=False, default=dict)
        qlora_config = QLoRAConfigField(required=False, default=dict)
        preset = serializers.CharField(required=False, allow_blank=True,
                                       help_text="quick-start, balanced, high-quality or a team preset id: its fields, "
                                       "with the ones given here on top")
        team = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=paginated(JobListItemSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request):
        return JOB_LIST.page(request, team=request_team_filter(request))

    @extend_schema(request=InputSerializer, responses={201: JobOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        job = training_job_create(team=team, user=request.user, name=v["name"], description=v["description"],
                                  base_model=v["base_model"], dataset_id=v["dataset_id"], lora_config=v["lora_config"],
                                  training_config=v["training_config"], qlora_config=v["qlora_config"],
                                  preset=v.get("preset"), eval_dataset_id=v.get("eval_dataset_id"))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request, job_id: int):
        return Response(JobOutputSerializer(training_job_get(user=request.user, pk=job_id)).data)

    @extend_schema(responses=JobOutputSerializer, description="Cancel the job: queued jobs end at once, running jobs within one training step.")
    def delete(self, request, job_id: int):
        job = training_job_cancel(job=training_job_get(user=request.user, pk=job_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class PresetListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        lora_config = LoRAConfigField(required=False, default=dict)
        training_config = TrainingConfigField(required=False, default=dict)
        qlora_config = QLoRAConfigField(required=False, default=dict)
        lora = LoRAConfigField(required=False, help_text="appendix A's spelling of lora_config")
        training = TrainingConfigField(required=False, help_text="appendix A's spelling of training_config")
        team = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(responses=paginated(PresetOutputSerializer), parameters=PAGE_PARAMETERS,
                   operation_id="v1_finetune_presets_list")
    def get(self, request):
        return paginate(request, preset_list(user=request.user), list)

    @extend_schema(request=InputSerializer, responses={201: PresetOutputSerializer})
    def post(self, request):
        team = request_team(request, write=True)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = {k: val for k, val in data.validated_data.items() if k != "team"}
        for short, full in (("lora", "lora_config"), ("training", "training_config")):
            if short in v:
                if full in request.data:
                    raise NexusError(f"{short}: given twice, as {short} and {full}: give one of them",
                                     code="validation_error", details={short: f"conflicts with {full}", full: "given too"})
                v[full] = v.pop(short)
        preset = preset_create(team=team, user=request.user, **v)
        return Response(preset_resolve(user=request.user, preset=preset.pk), status=status.HTTP_201_CREATED)


class PresetDetailApi(APIView):
    @extend_schema(responses=PresetOutputSerializer)
    def get(self, request, preset_id: str):
        return Response(preset_resolve(user=request.user, preset=preset_id))


class EstimateApi(APIView):
    class InputSerializer(serializers.Serializer):
        base_model = serializers.CharField()
        dataset_id = serializers.IntegerField(required=False)
        preset = serializers.CharField(required=False, allow_blank=True)
        lora_config = LoRAConfigField(required=False, default=dict)
        training_config = TrainingConfigField(required=False, default=dict)
        qlora_config = QLoRAConfigField(required=False, default=dict)
        device = serializers.ChoiceField(choices=["cuda", "cpu"], required=False, default="cuda")

    @extend_schema(request=InputSerializer, responses=EstimateSerializer, description="Memory broken down from the model's config (weights at the "
                   "quantization's bits, LoRA parameters with gradients and optimizer states, activations, logits, "
                   "runtime) and time from throughput measured by finished jobs on this deployment.")
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(training_estimate(user=request.user, **data.validated_data))


class JobMetricsApi(APIView):
    @extend_schema(responses=MetricsSerializer)
    def get(self, request, job_id: int):
        return Response(training_job_metrics(job=training_job_get(user=request.user, pk=job_id)))


class JobLogsApi(APIView):
    @extend_schema(parameters=[OpenApiParameter("offset", int), OpenApiParameter("limit", int),
                               OpenApiParameter("level", str)], responses=LogPageSerializer)
    def get(self, request, job_id: int):
        job = training_job_get(user=request.user, pk=job_id)
        body = training_job_logs(job=job, offset=int_query_param(request, "offset", 0, hi=10**9),
                                 limit=int_query_param(request, "limit", 200, lo=1, hi=1000),
                                 level=request.query_params.get("level") or None)
        return Response(with_links(request, body))


class JobPauseApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer},
                   description="Pause: the trainer saves a checkpoint after the current step and stops.")
    def post(self, request, job_id: int):
        job = training_job_pause(job=training_job_get(user=request.user, pk=job_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobResumeApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer},
                   description="Resume a paused job from its last checkpoint, or withdraw a pause that has not taken effect yet.")
    def post(self, request, job_id: int):
        job = training_job_resume(job=training_job_get(user=request.user, pk=job_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobCheckpointRequestApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer},
                   description="Save a checkpoint (adapter, optimizer, scheduler, RNG) after the current step.")
    def post(self, request, job_id: int):
        job = training_job_request_checkpoint(job=training_job_get(user=request.user, pk=job_id, write=True))
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobCheckpointsApi(APIView):
    @extend_schema(responses=paginated(CheckpointSerializer), parameters=PAGE_PARAMETERS)
    def get(self, request, job_id: int):
        return paginate(request, training_job_checkpoints(job=training_job_get(user=request.user, pk=job_id)), list)


class JobCheckpointAdapterApi(APIView):
    @extend_schema(request=None, responses={201: AdapterOutputSerializer},
                   description="Turn the checkpoint at this step into an adapter.")
    def post(self, request, job_id: int, step: int):
        from adapters_app.apis import AdapterOutputSerializer

        job = training_job_get(user=request.user, pk=job_id, write=True)
        adapter = training_job_checkpoint_to_adapter(job=job, step=step)
        return Response(AdapterOutputSerializer(adapter).data, status=status.HTTP_201_CREATED)
