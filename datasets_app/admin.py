from __future__ import annotations

from django.contrib import admin

from datasets_app.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "format", "status", "num_examples", "num_invalid", "total_tokens", "created_at"]
    list_filter = ["status", "format", "team"]
    search_fields = ["name", "description", "original_filename"]
    readonly_fields = ["created_at", "updated_at"]


# -- distillation ----------------------------------------------------------------------------------
from datasets_app.models import (  # noqa: E402
    DistillationItem,
    DistillationJob,
    DistillationTeacher,
    DistillationTemplate,
    TeacherConnection,
    TeacherPrice,
)

SECRET_FIELDS = ["api_key_encrypted"]  # keys are never shown, not even encrypted


@admin.register(TeacherPrice)
class TeacherPriceAdmin(admin.ModelAdmin):
    """The operator's price table: USD per million tokens by model name or name prefix (the longest
    matching prefix prices a model). A row overrides the built-in list price of its model; deleting
    it goes back to the list price. Costs of jobs already run are not recomputed."""

    list_display = ["model", "input_per_mtok", "output_per_mtok", "updated_at"]
    list_editable = ["input_per_mtok", "output_per_mtok"]
    search_fields = ["model"]


@admin.register(TeacherConnection)
class TeacherConnectionAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "provider", "model", "base_url", "key_last4", "updated_at"]
    list_filter = ["provider", "team"]
    search_fields = ["name", "model"]
    exclude = SECRET_FIELDS
    readonly_fields = ["key_last4", "last_check", "created_at", "updated_at"]


class DistillationTeacherInline(admin.TabularInline):
    model = DistillationTeacher
    exclude = SECRET_FIELDS
    readonly_fields = ["role", "position", "provider", "model", "base_url", "key_last4", "requests", "tokens_in",
                       "tokens_out", "cost_usd"]
    extra = 0
    can_delete = False


@admin.register(DistillationJob)
class DistillationJobAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "status", "mode", "num_items", "accepted", "rejected", "requests", "cost_usd",
                    "created_at"]
    list_filter = ["status", "mode", "team"]
    search_fields = ["name"]
    readonly_fields = ["created_at", "updated_at", "started_at", "completed_at", "worker"]
    inlines = [DistillationTeacherInline]


@admin.register(DistillationItem)
class DistillationItemAdmin(admin.ModelAdmin):
    list_display = ["id", "job", "group", "status", "review", "reason", "score"]
    list_filter = ["status", "reason"]
    search_fields = ["prompt"]
    raw_id_fields = ["job", "teacher", "reviewed_by"]


@admin.register(DistillationTemplate)
class DistillationTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "team", "updated_at"]
    search_fields = ["name", "slug"]
