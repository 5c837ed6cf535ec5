from __future__ import annotations

from django.contrib import admin

from adapters_app.models import LoRAAdapter


@admin.register(LoRAAdapter)
class LoRAAdapterAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "team", "base_model", "final_loss", "size_bytes", "created_at"]
    list_filter = ["team", "base_model"]
    search_fields = ["name"]
