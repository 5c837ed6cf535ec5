from __future__ import annotations

from django.contrib import admin

from training_app.models import FineTuningJob, TrainingPreset


@admin.register(FineTuningJob)
class FineTuningJobAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "base_model", "dataset", "status", "progress", "current_step", "total_steps",
                    "current_loss", "best_loss", "created_at"]
    list_filter = ["status", "team", "base_model"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at", "started_at", "finished_at"]


@admin.register(TrainingPreset)
class TrainingPresetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "created_by", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "description"]
