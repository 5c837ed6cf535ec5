from __future__ import annotations

from django.db import models

from nexus.models import BaseModel, Team


class LoRAAdapter(models.Model):
    """A trained adapter in PEFT's format (loadable with PeftModel.from_pretrained).

    Versioned per (team, name): a new run of the same name, or an adapter taken from a checkpoint
    under that name, is the next version. Lineage is the job, its dataset and the checkpoint step."""

    class Source(models.TextChoices):
        JOB = "job", "Finished job"
        CHECKPOINT = "checkpoint", "Checkpoint"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapters")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    version = models.PositiveIntegerField(default=1)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="adapters")
    job = models.ForeignKey(
        "training_app.FineTuningJob", null=True, blank=True, on_delete=models.SET_NULL, related_name="adapters",
        verbose_name="training job",
    )
    dataset = models.ForeignKey(
        "datasets_app.Dataset", null=True, blank=True, on_delete=models.SET_NULL, related_name="adapters"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.JOB)
    checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    path = models.CharField("file path", max_length=500,
                            help_text="Folder holding adapter_config.json and adapter_model.safetensors (storage name)")
    size_bytes = models.BigIntegerField("file size", default=0, help_text="bytes")
    sha256 = models.CharField(max_length=64, blank=True, help_text="Of adapter_model.safetensors")
    lora_config = models.JSONField(default=dict, blank=True, help_text="rank, alpha, dropout, target_modules, bias, ...")
    training_config = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True, help_text="final/best training and validation loss, steps, tokens")
    final_loss = models.FloatField(null=True, blank=True)
    is_merged = models.BooleanField(default=False)
    merged_model = models.ForeignKey(
        BaseModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="merged_from"
    )
    gguf_path = models.CharField(max_length=500, blank=True, help_text="The latest verified adapter GGUF")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "LoRA adapter"
        constraints = [models.UniqueConstraint(fields=["team", "name", "version"], name="adapter_unique_version")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class AdapterExport(models.Model):
    """A merge or GGUF export of an adapter: a `cpu` job with progress events (kind 'export')."""

    class Kind(models.TextChoices):
        MERGE = "merge", "Merged model (safetensors)"
        ADAPTER_GGUF = "adapter_gguf", "LoRA adapter GGUF"
        MODEL_GGUF = "model_gguf", "Merged model GGUF"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        VERIFYING = "verifying", "Verifying"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.VERIFYING)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="adapter_exports")
    adapter = models.ForeignKey(LoRAAdapter, on_delete=models.CASCADE, related_name="exports")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    quantization = models.CharField(max_length=16, blank=True, help_text="f32, f16, q8_0 or q4_k_m (GGUF)")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    stage = models.CharField(max_length=200, blank=True)
    path = models.CharField(max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    verified = models.BooleanField(default=False)
    verification = models.JSONField(default=dict, blank=True, help_text="prompt, greedy output, tokens/s")
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.quantization} of {self.adapter}"

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1] if self.path else ""
