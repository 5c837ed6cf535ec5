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
        UPLOADED = "uploaded", "Uploaded"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        ERROR = "error", "Error"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    format = models.CharField(max_length=20, choices=Format.choices, default=Format.AUTO)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UPLOADED, db_index=True)
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
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name

    @property
    def file_path(self) -> str:
        return self.original_file.name if self.original_file else ""
