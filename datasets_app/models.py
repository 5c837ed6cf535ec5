from __future__ import annotations

from django.conf import settings
from django.db import models

from nexus.models import Team


def _original_upload_to(instance: "Dataset", filename: str) -> str:
    return f"datasets/team-{instance.team_id}/original/{filename}"


class Dataset(models.Model):
    class Format(models.TextChoices):
        AUTO = "auto", "Auto-detect"
        ALPACA = "alpaca", "Alpaca"
        SHAREGPT = "sharegpt", "ShareGPT"
        CHATML = "chatml", "ChatML / OpenAI messages"
        COMPLETION = "completion", "Completion (text)"

    class Status(models.TextChoices):
        UPLOADING = "uploading", "Uploading"  # stored, waiting for (or between) processing
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        ERROR = "error", "Error"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    format = models.CharField(max_length=20, choices=Format.choices, default=Format.AUTO)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADING, db_index=True)
    # The original upload is kept untouched; the normalized JSONL is written beside it.
    original_file = models.FileField(upload_to=_original_upload_to, max_length=500)
    original_filename = models.CharField(max_length=255, blank=True)
    file_size = models.BigIntegerField(default=0)
    normalized_file = models.CharField(max_length=500, blank=True)
    num_examples = models.PositiveIntegerField(default=0)
    num_invalid = models.PositiveIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    validation_errors = models.JSONField(default=list, blank=True)
    statistics = models.JSONField(default=dict, blank=True)
    error_message = models.TextField(blank=True)
    file_type = models.CharField(max_length=16, blank=True, help_text="jsonl, json, csv or parquet")
    detection = models.JSONField(default=dict, blank=True, help_text="auto-detected format, confidence, evidence")
    validated_with = models.ForeignKey("nexus.BaseModel", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    validation_config = models.JSONField(default=dict, blank=True)
    duplicates = models.JSONField(default=dict, blank=True, help_text="exact / near / overlap clusters by record index")
    # Removal of duplicates is the user's choice, recorded and reversible: the normalized file keeps
    # every valid record; these source indices are left out of training, splits and downloads.
    excluded_indices = models.JSONField(default=list, blank=True)
    dedup_actions = models.JSONField(default=list, blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="splits")
    split = models.CharField(max_length=16, blank=True, help_text="train, val or test for a split of `parent`")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    worker = models.CharField(max_length=255, blank=True, help_text="the worker processing it")
    origin = models.JSONField(default=dict, blank=True, help_text="where the records came from, e.g. a distillation job")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def file_path(self) -> str:
        return self.original_file.name if self.original_file else ""

    @property
    def num_usable(self) -> int:
        return max(0, self.num_examples - len(self.excluded_indices or []))


# Distillation produces datasets; its rows belong to this app.
from datasets_app.distillation.models import (  # noqa: E402,F401
    DistillationItem,
    DistillationJob,
    DistillationTeacher,
    DistillationTemplate,
    TeacherConnection,
    TeacherPrice,
)
