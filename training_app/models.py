from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.db import models

from nexus.models import BaseModel, Team
from training_app.engine.config import LoRAConfig, QLoRAConfig, TrainingConfig


def default_lora_config() -> dict:
    return asdict(LoRAConfig())


def default_training_config() -> dict:
    return asdict(TrainingConfig())


def default_qlora_config() -> dict:
    return asdict(QLoRAConfig())


class FineTuningJob(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PREPARING = "preparing", "Preparing"  # loading the model, encoding the data
        TRAINING = "training", "Training"
        EVALUATING = "evaluating", "Evaluating"  # validation loss on the held-out data
        EXPORTING = "exporting", "Exporting"  # saving the adapter
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        PAUSED = "paused", "Paused"

    # a worker holds the job in any of these; the reaper looks for them when a worker is gone
    RUNNING = (Status.PREPARING, Status.TRAINING, Status.EVALUATING, Status.EXPORTING)
    ACTIVE = (Status.QUEUED, *RUNNING, Status.PAUSED)

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="finetuning_jobs")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="finetuning_jobs")
    dataset = models.ForeignKey("datasets_app.Dataset", on_delete=models.PROTECT, related_name="finetuning_jobs")
    eval_dataset = models.ForeignKey("datasets_app.Dataset", null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="evaluating_jobs", help_text="validation data (else a held-out split)")
    lora_config = models.JSONField(default=default_lora_config)
    training_config = models.JSONField(default=default_training_config)
    qlora_config = models.JSONField(default=default_qlora_config)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED, db_index=True)
    progress = models.FloatField(default=0.0, help_text="0-100")
    current_step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    current_epoch = models.FloatField(default=0.0)
    current_loss = models.FloatField(null=True, blank=True)
    best_loss = models.FloatField(null=True, blank=True)
    current_eval_loss = models.FloatField(null=True, blank=True)
    best_eval_loss = models.FloatField(null=True, blank=True)
    best_checkpoint_step = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_second = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    warnings = models.JSONField(default=list, blank=True, help_text="settings the job could not honour as asked "
                                "(a default that does not fit the model, bf16 on a CPU, ...) and what it used instead")
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    pause_requested = models.BooleanField(default=False)
    checkpoint_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=255, blank=True)
    output_dir = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField("completed at", null=True, blank=True,
                                       help_text="when it ended: completed, failed or cancelled (the API's completed_at)")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "fine-tuning job"

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_running(self) -> bool:
        return self.status in self.RUNNING

    @property
    def adapter(self):
        """The adapter this job produced when it finished (checkpoint adapters are separate)."""
        return self.adapters.filter(source="job").order_by("-version").first()


class TrainingPreset(models.Model):
    """A team's own preset. The built-in ones (training_app/presets.py) live in code."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="training_presets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    lora_config = models.JSONField(default=dict, blank=True)
    training_config = models.JSONField(default=dict, blank=True)
    qlora_config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team_id", "name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="preset_unique_name_per_team")]

    def __str__(self) -> str:
        return self.name
