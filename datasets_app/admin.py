from __future__ import annotations

from django.contrib import admin

from datasets_app.models import Dataset


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "format", "status", "num_examples", "num_invalid", "total_tokens", "created_at"]
    list_filter = ["status", "format", "team"]
    search_fields = ["name", "description", "original_filename"]
    readonly_fields = ["created_at", "updated_at"]
